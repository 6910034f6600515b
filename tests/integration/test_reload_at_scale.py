"""A reload of a large generated policy set leaves the event loop free: /healthz and webhooks
keep answering while every file is read again, and the edit lands."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import SERVICES
from gateway.policy import watch
from tests.support.clock import FakeClock
from tests.support.gateway import PUBLIC, Client, start_gateway
from tests.support.twilio import signed_form

LOADTEST = str(Path(__file__).resolve().parents[2] / "loadtest")
if LOADTEST not in sys.path:
    sys.path.insert(0, LOADTEST)

import tenants  # noqa: E402  (loadtest/ is a directory of scripts)

# Enough files that a reload on the loop would hold it for a second or more (0.7 ms a file).
TENANTS = 2_000


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, list[tenants.Generated]]:
    directory = tmp_path / "policies"
    return directory, tenants.generate(directory, TENANTS)


async def _gateway(aiohttp_client: Any, directory: Path) -> Client:
    return await start_gateway(aiohttp_client, directory, {tenants.TOKEN_ENV: tenants.TOKEN}, FakeClock())


async def _voice(client: Client, made: tenants.Generated) -> str:
    params = {"AccountSid": made.account_sid, "CallSid": "CA" + "1" * 32, "From": "+14155550100", "To": made.number}
    head, body = signed_form(tenants.TOKEN, PUBLIC + "/twilio/voice", params)
    response = await client.post("/twilio/voice", data=body, headers=head)
    assert response.status == 200
    return await response.text()


async def test_a_full_reload_of_thousands_of_files_leaves_the_loop_free(
    aiohttp_client: Any, generated: tuple[Path, list[tenants.Generated]]
) -> None:
    """Every one of 2,000 files edited, then a SIGHUP compiles them all: the /healthz probe
    answers again and again meanwhile, its slowest answer a small part of the reload's time
    (inline, one answer would wait it all out), and the new texts are live after it."""
    directory, made = generated
    client = await _gateway(aiohttp_client, directory)
    registry = client.app[SERVICES].registry
    for one in made:
        one.file.write_text(one.file.read_text().replace(one.greeting, one.greeting.replace("Thanks", "Welcome")))
    started = time.perf_counter()
    reloading = asyncio.create_task(watch.reload_soon(registry, "SIGHUP", full=True))
    answers: list[float] = []
    while not reloading.done():
        asked = time.perf_counter()
        response = await client.get("/healthz")
        assert response.status == 200
        answers.append(time.perf_counter() - asked)
    took = time.perf_counter() - started
    assert await reloading is True
    assert len(answers) >= 10, f"{len(answers)} answers in a {took:.2f} s reload"
    assert max(answers) < took / 3, f"slowest answer {max(answers) * 1000:.0f} ms in a {took:.2f} s reload"
    assert made[3].greeting.replace("Thanks", "Welcome") in await _voice(client, made[3])


async def test_one_edited_file_among_thousands_is_live_after_its_reload(
    aiohttp_client: Any, generated: tuple[Path, list[tenants.Generated]]
) -> None:
    """One file's greeting changed among 2,000: the watcher's reload makes its webhook say the new text."""
    directory, made = generated
    client = await _gateway(aiohttp_client, directory)
    edited = made[7]
    edited.file.write_text(edited.file.read_text().replace(edited.greeting, "Closed for the holidays."))
    assert await watch.reload_soon(client.app[SERVICES].registry, "files changed") is True
    assert "Closed for the holidays." in await _voice(client, edited)
    assert made[8].greeting in await _voice(client, made[8])
