"""Policy reloads: the files' stamps, reload(), and the polling loop (driven, never slept)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.policy import watch
from gateway.policy.loader import stamps
from gateway.policy.registry import Registry
from tests.support.policies import FIXTURES
from tests.support.policies import PUBLIC as CONTEXT


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the valid fixtures, free to edit."""
    directory = tmp_path / "policies"
    shutil.copytree(FIXTURES / "valid", directory)
    return directory


def _add_gamma(directory: Path) -> None:
    text = (FIXTURES / "valid" / "beta.yml").read_text(encoding="utf-8")
    text = text.replace("AC00000000000000000000000000000b02", "AC00000000000000000000000000000e05")
    (directory / "gamma.yaml").write_text(text.replace("+15550200001", "+15550400001"), encoding="utf-8")


def test_stamps_lists_policy_files_with_size_and_mtime(policy_dir: Path) -> None:
    """One name -> (size, mtime_ns, inode) entry per policy file, in name order; other files are ignored."""
    (policy_dir / "notes.txt").write_text("not a policy", encoding="utf-8")
    (policy_dir / "archive.yaml").mkdir()
    entries = stamps(policy_dir)
    assert list(entries) == ["alpha.yaml", "beta.yml"]
    stat = (policy_dir / "alpha.yaml").stat()
    assert entries["alpha.yaml"] == (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def test_stamps_is_stable_when_nothing_changes(policy_dir: Path) -> None:
    """Two snapshots of an untouched directory are equal."""
    assert stamps(policy_dir) == stamps(policy_dir)


def test_stamps_changes_on_edit(policy_dir: Path) -> None:
    """Editing a file's content (and so its size) changes the snapshot."""
    before = stamps(policy_dir)
    with (policy_dir / "beta.yml").open("a", encoding="utf-8") as file:
        file.write("# edited\n")
    assert stamps(policy_dir) != before


def test_stamps_changes_on_same_size_edit_with_new_mtime(policy_dir: Path) -> None:
    """An edit that keeps the size is still seen through the modification time."""
    path = policy_dir / "beta.yml"
    before = stamps(policy_dir)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert stamps(policy_dir) != before


def test_stamps_changes_on_add_and_remove(policy_dir: Path) -> None:
    """A new policy file and a deleted one both change the snapshot."""
    before = stamps(policy_dir)
    _add_gamma(policy_dir)
    added = stamps(policy_dir)
    assert added != before
    (policy_dir / "beta.yml").unlink()
    assert stamps(policy_dir) not in (before, added)


def test_stamps_ignores_non_policy_files(policy_dir: Path) -> None:
    """Adding a README next to the policies does not count as a change."""
    before = stamps(policy_dir)
    (policy_dir / "README.md").write_text("docs", encoding="utf-8")
    assert stamps(policy_dir) == before


def test_stamps_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    """A vanished directory gives an empty snapshot rather than an exception."""
    assert stamps(tmp_path / "gone") == {}


async def test_reload_returns_true_and_swaps_on_good_files(policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """reload_soon() answers True, installs the new set and logs the reason and tenant count."""
    registry = Registry(policy_dir, CONTEXT)
    _add_gamma(policy_dir)
    with caplog.at_level(logging.INFO, logger="switchyard.policy"):
        assert await watch.reload_soon(registry, "SIGHUP", full=True) is True
    assert "gamma" in registry.current.tenants
    assert "policies reloaded (SIGHUP): 3 tenants" in caplog.text


async def test_reload_returns_false_and_keeps_the_bad_file_out(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """reload_soon() answers False on a bad new file, leaves it out and logs the file and key."""
    registry = Registry(policy_dir, CONTEXT)
    before = registry.current
    shutil.copy(FIXTURES / "bad-per.yaml", policy_dir / "gamma.yaml")
    with caplog.at_level(logging.ERROR, logger="switchyard.policy"):
        assert await watch.reload_soon(registry, "files changed") is False
    assert registry.current.tenants == before.tenants
    assert "1 file(s) refused, each keeps its last good policy" in caplog.text
    assert "gamma.yaml: limits.webhooks.per:" in caplog.text


async def test_a_reload_of_a_missing_directory_keeps_every_tenant(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The directory gone (or emptied) mid-run is refused whole: the set in force stays."""
    registry = Registry(policy_dir, CONTEXT)
    before = registry.current
    shutil.rmtree(policy_dir)
    with caplog.at_level(logging.ERROR, logger="switchyard.policy"):
        assert await watch.reload_soon(registry, "files changed") is False
    assert registry.current is before
    assert "refused; the previous policies stay in force" in caplog.text


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Ticker:
    """Stands in for asyncio.sleep in the watch loop: each tick() runs exactly one poll."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._go: asyncio.Queue[None] = asyncio.Queue()
        self._parked: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, interval: float) -> None:
        self.intervals.append(interval)
        await self._parked.put(None)
        await self._go.get()

    async def parked(self) -> None:
        """Wait until the loop is back in its sleep, i.e. one poll has finished."""
        await self._parked.get()

    async def tick(self) -> None:
        await self._go.put(None)
        await self.parked()


@pytest.fixture
async def ticker(monkeypatch: pytest.MonkeyPatch) -> Ticker:
    """The watch module's asyncio, with a sleep that only returns when the test ticks."""
    fake = Ticker()
    monkeypatch.setattr(
        watch, "asyncio", SimpleNamespace(sleep=fake.sleep, to_thread=asyncio.to_thread, Event=asyncio.Event)
    )
    return fake


async def test_watch_reloads_only_when_files_change(policy_dir: Path, ticker: Ticker) -> None:
    """The loop keeps the set while nothing changes and swaps it on the poll after a change."""
    registry = Registry(policy_dir, CONTEXT)
    task = asyncio.create_task(watch.watch(registry, 2.5, mode="poll"))
    try:
        await ticker.parked()
        first = registry.current
        await ticker.tick()
        assert registry.current is first
        _add_gamma(policy_dir)
        await ticker.tick()
        assert "gamma" in registry.current.tenants
        second = registry.current
        await ticker.tick()
        assert registry.current is second
        assert ticker.intervals == [2.5] * 4
    finally:
        await _stop(task)


async def test_watch_survives_a_bad_edit_and_picks_up_the_fix(policy_dir: Path, ticker: Ticker) -> None:
    """A refused reload keeps the old set and the loop; fixing the file is picked up next poll."""
    registry = Registry(policy_dir, CONTEXT)
    task = asyncio.create_task(watch.watch(registry, 1.0, mode="poll"))
    try:
        await ticker.parked()
        before = registry.current
        shutil.copy(FIXTURES / "rate-zero.yaml", policy_dir / "gamma.yaml")
        await ticker.tick()
        assert registry.current is before
        await ticker.tick()
        assert registry.current is before
        _add_gamma(policy_dir)
        await ticker.tick()
        assert "gamma" in registry.current.tenants
        assert not task.done()
    finally:
        await _stop(task)


async def test_a_reload_reads_only_the_changed_file_off_the_loop(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file edited: the reload parses that file alone, in a worker thread, while the event
    loop goes on running (here it runs a task while the parse is held back); then it swaps."""
    import threading

    from gateway.policy import loader

    for i in range(50):
        text = (FIXTURES / "valid" / "beta.yml").read_text(encoding="utf-8")
        text = text.replace("AC00000000000000000000000000000b02", f"AC{i:032x}")
        (policy_dir / f"t{i:03}.yaml").write_text(text.replace("+15550200001", f"+1555090{i:04}"), encoding="utf-8")
    registry = Registry(policy_dir, CONTEXT)
    before = registry.current
    parsed: list[tuple[str, int]] = []
    held = threading.Event()
    real = loader.load_bytes

    def load_bytes(path: Path, content: bytes, context: loader.LoadContext) -> object:
        parsed.append((path.name, threading.get_ident()))
        held.wait(timeout=10)
        return real(path, content, context)

    monkeypatch.setattr(loader, "load_bytes", load_bytes)
    _add_gamma(policy_dir)
    reloading = asyncio.create_task(watch.reload_soon(registry, "files changed"))
    ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(ran.set)
    await asyncio.wait_for(ran.wait(), 5)  # the loop is free while the parse waits
    assert not reloading.done() and registry.current is before
    held.set()
    assert await reloading is True
    assert [name for name, _ in parsed] == ["gamma.yaml"]
    assert parsed[0][1] != threading.get_ident()
    assert "gamma" in registry.current.tenants and len(registry.current.tenants) == 53
    assert registry.current.tenants["t007"] is before.tenants["t007"]  # kept, not read again
    assert await watch.reload_soon(registry, "files changed") is None  # nothing changed since


async def test_sighup_compiles_again_only_what_changed(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full reload (SIGHUP's) reads every file's bytes, and compiles only those that changed:
    an unchanged tenant is the very same object after it."""
    from gateway.policy import loader

    registry = Registry(policy_dir, CONTEXT)
    before = registry.current.tenants
    parsed: list[str] = []
    real = loader.load_bytes

    def load_bytes(path: Path, content: bytes, context: loader.LoadContext) -> object:
        parsed.append(path.name)
        return real(path, content, context)

    monkeypatch.setattr(loader, "load_bytes", load_bytes)
    assert await watch.reload_soon(registry, "SIGHUP", full=True) is True
    assert parsed == []
    assert registry.current.tenants["alpha"] is before["alpha"]


async def test_sighup_sees_an_edit_that_kept_the_files_stamp(policy_dir: Path) -> None:
    """An edit of the same size whose mtime was put back is not seen by the watcher's stamps,
    but SIGHUP reads the bytes and loads it."""
    registry = Registry(policy_dir, CONTEXT)
    path = policy_dir / "alpha.yaml"
    text = path.read_text(encoding="utf-8")
    assert "+15550100002" in text
    stat = path.stat()
    path.write_text(text.replace("+15550100002", "+15550100009"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await watch.reload_soon(registry, "files changed") is None  # the stamp says nothing changed
    assert await watch.reload_soon(registry, "SIGHUP", full=True) is True
    assert registry.current.by_number["+15550100009"].id == "alpha"


async def test_sighup_compiles_again_a_policy_that_names_a_file(tmp_path: Path) -> None:
    """A policy whose JWT key is a PEM file is compiled again on SIGHUP though its bytes are the
    same: the key file replaced beside it is what goes live."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def pem() -> tuple[bytes, ec.EllipticCurvePublicKey]:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), public

    directory = tmp_path / "policies"
    shutil.copytree(FIXTURES / "valid", directory)
    first, first_key = pem()
    (directory / "es-1.pem").write_bytes(first)
    (directory / "keys.yaml").write_text(
        "twilio: {account_sid: AC0123456789abcdef0123456789abcdef, auth_token_env: FIXTURE_TWILIO_AUTH_TOKEN}\n"
        "api: {keys: [{kid: es-1, alg: ES256, public_key_file: es-1.pem}]}\n"
    )
    registry = Registry(directory, CONTEXT)
    api = registry.current.tenants["keys"].api
    assert api is not None and api.keys[0].key.public_numbers() == first_key.public_numbers()
    second, second_key = pem()
    (directory / "es-1.pem").write_bytes(second)
    alpha = registry.current.tenants["alpha"]
    assert await watch.reload_soon(registry, "SIGHUP", full=True) is True
    api = registry.current.tenants["keys"].api
    assert api is not None and api.keys[0].key.public_numbers() == second_key.public_numbers()
    assert registry.current.tenants["alpha"] is alpha


class Results:
    """The watcher's on_result: each reload's outcome, and an event set by each."""

    def __init__(self) -> None:
        self.outcomes: list[bool] = []
        self.arrived = asyncio.Event()

    def __call__(self, ok: bool) -> None:
        self.outcomes.append(ok)
        self.arrived.set()

    async def watching(self, poke: Callable[[int], None]) -> None:
        """Change the files' stamps (not their meaning) until a reload follows, i.e. the watcher's
        thread is watching, and forget that reload: no fixed sleep for the watcher to start."""
        for step in range(100):
            poke(step)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.2)
                break
        assert self.outcomes == [True]
        self.outcomes.clear()
        self.arrived.clear()


async def test_a_file_event_reloads_without_waiting_for_a_poll(policy_dir: Path) -> None:
    """With file events, an added file is live as soon as the directory is quiet, though the
    poll interval (an hour here) never comes round."""
    registry = Registry(policy_dir, CONTEXT)
    results = Results()
    stop = asyncio.Event()
    task = asyncio.create_task(watch.watch(registry, 3600, results, stop=stop))
    try:
        await results.watching(lambda step: _touch(policy_dir / "alpha.yaml", step))
        _add_gamma(policy_dir)
        await asyncio.wait_for(results.arrived.wait(), 10)
        assert "gamma" in registry.current.tenants
        assert results.outcomes == [True]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # the stop event ends the watcher's thread promptly


def _touch(path: Path, step: int) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000 * (step + 1)))


def _configmap(root: Path, version: str, files: dict[str, str]) -> None:
    """Lay out `root` as the kubelet does a ConfigMap volume: each file a symlink through
    `..data`, itself a symlink to a timestamped directory, swapped atomically on update."""
    data = root / version
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text, encoding="utf-8")
        if not (root / name).is_symlink():
            (root / name).symlink_to(Path("..data") / name)
    tmp = root / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, root / "..data")


async def test_a_configmap_update_is_one_reload(tmp_path: Path) -> None:
    """A ConfigMap update (new directory, `..data` swapped, old directory removed) lands as one
    reload of the files whose content changed; the others keep their tenant object."""
    root = tmp_path / "policies"
    root.mkdir()
    files = {name: (FIXTURES / "valid" / name).read_text(encoding="utf-8") for name in ("alpha.yaml", "beta.yml")}
    _configmap(root, "..2026_12_07_01", files)
    registry = Registry(root, CONTEXT)
    beta = registry.current.tenants["beta"]
    results = Results()
    stop = asyncio.Event()
    task = asyncio.create_task(watch.watch(registry, 3600, results, stop=stop))
    try:
        await results.watching(lambda step: _configmap(root, f"..2026_12_07_00_{step}", files))
        files["alpha.yaml"] = files["alpha.yaml"].replace("+15550100002", "+15550100009")
        _configmap(root, "..2026_12_07_02", files)
        shutil.rmtree(root / "..2026_12_07_01")
        await asyncio.wait_for(results.arrived.wait(), 10)
        assert "+15550100009" in registry.current.by_number
        assert results.outcomes == [True]
        assert registry.current.tenants["beta"] is beta  # its content did not change: not re-read
        assert registry.prepare() is None  # nothing left to reload: no second reload can follow
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_without_file_events_the_watcher_polls(
    policy_dir: Path, ticker: Ticker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where watchfiles cannot be had, the watcher says so and polls at the interval."""
    import sys

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails
    registry = Registry(policy_dir, CONTEXT)
    with caplog.at_level(logging.WARNING, logger="switchyard.policy"):
        task = asyncio.create_task(watch.watch(registry, 2.0))
        try:
            await ticker.parked()
            _add_gamma(policy_dir)
            await ticker.tick()
            assert "gamma" in registry.current.tenants
        finally:
            await _stop(task)
    assert "polling every 2s" in caplog.text


def test_overlapping_reloads_put_the_switch_interval_back() -> None:
    """Two reloads overlapping (two registries in one process) leave the GIL's switch interval as it was."""
    import sys

    before = sys.getswitchinterval()
    first, second = watch._loop_first(), watch._loop_first()
    first.__enter__()
    second.__enter__()
    assert sys.getswitchinterval() == watch.RELOAD_SWITCH_INTERVAL
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == watch.RELOAD_SWITCH_INTERVAL  # the second still runs
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before


async def test_a_small_reload_freezes_nothing(policy_dir: Path) -> None:
    """A reload of one file goes live without freezing the heap (in-flight requests' objects stay collectable)."""
    import gc

    registry = Registry(policy_dir, CONTEXT)
    gc.unfreeze()
    _add_gamma(policy_dir)
    assert await watch.reload_soon(registry, "files changed") is True
    assert gc.get_freeze_count() == 0 and gc.isenabled()
