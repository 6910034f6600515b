"""The live policy set: lookups by tenant, number and account SID; a start-up refused on any bad
file, and reloads where a bad file keeps its tenant's last good policy and the rest goes live."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy.loader import LoadContext
from gateway.policy.registry import PolicySet, Registry
from tests.support.policies import ENV, FIXTURES
from tests.support.policies import PUBLIC as CONTEXT

ALPHA_SID = "AC00000000000000000000000000000a01"
BETA_SID = "AC00000000000000000000000000000b02"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the valid fixtures, free to edit."""
    directory = tmp_path / "policies"
    shutil.copytree(FIXTURES / "valid", directory)
    return directory


def _gamma(directory: Path, sid: str) -> None:
    """A third tenant, on the given account, owning +15550400001."""
    text = (FIXTURES / "valid" / "beta.yml").read_text(encoding="utf-8")
    text = text.replace(BETA_SID, sid).replace("+15550200001", "+15550400001")
    (directory / "gamma.yaml").write_text(text, encoding="utf-8")


def _swap(registry: Registry) -> PolicyError | None:
    """The watcher's reload of what changed (prepare, then apply), in this thread."""
    prepared = registry.prepare()
    assert prepared is not None, "no file changed"
    return registry.apply(prepared)


def test_lookup_by_tenant_number_and_account(policy_dir: Path) -> None:
    """Each tenant is found by its id, by each of its numbers, and by its own account SID."""
    current = Registry(policy_dir, CONTEXT).current
    alpha, beta = current.tenants["alpha"], current.tenants["beta"]
    assert current.by_number == {"+15550100001": alpha, "+15550100002": alpha, "+15550200001": beta}
    assert current.by_account == {ALPHA_SID: alpha, BETA_SID: beta}


def test_shared_account_sid_is_not_used_for_lookup(policy_dir: Path) -> None:
    """Two tenants on one Twilio account: the SID picks neither, their numbers still do."""
    _gamma(policy_dir, BETA_SID)
    current = Registry(policy_dir, CONTEXT).current
    assert BETA_SID not in current.by_account
    assert current.by_account == {ALPHA_SID: current.tenants["alpha"]}
    assert current.by_number["+15550200001"].id == "beta"
    assert current.by_number["+15550400001"].id == "gamma"


def test_policy_set_does_not_share_the_callers_mapping(policy_dir: Path) -> None:
    """PolicySet.of copies the tenants it is given: changing that dict later changes nothing."""
    tenants = dict(Registry(policy_dir, CONTEXT).current.tenants)
    snapshot = PolicySet.of(tenants)
    del tenants["beta"]
    assert sorted(snapshot.tenants) == ["alpha", "beta"]


def test_bad_directory_fails_at_start(policy_dir: Path) -> None:
    """A registry cannot be built over a bad file: the start-up error names it."""
    shutil.copy(FIXTURES / "rate-zero.yaml", policy_dir / "rate-zero.yaml")
    with pytest.raises(PolicyError) as caught:
        Registry(policy_dir, CONTEXT)
    assert [p.file for p in caught.value.problems] == ["rate-zero.yaml"]


def test_missing_secret_fails_at_start(policy_dir: Path) -> None:
    """An unset token variable is a start-up error naming file, key and variable."""
    env = {k: v for k, v in ENV.items() if k != "FIXTURE_BETA_AUTH_TOKEN"}
    with pytest.raises(PolicyError) as caught:
        Registry(policy_dir, LoadContext(env=env, public_url="https://gw.example.com"))
    assert str(caught.value) == (
        "beta.yml: twilio.auth_token_env: environment variable FIXTURE_BETA_AUTH_TOKEN is not set"
    )


def test_reload_with_a_bad_new_file_leaves_it_out(policy_dir: Path) -> None:
    """A bad new file makes reload return its error; it is not loaded and the others serve on."""
    registry = Registry(policy_dir, CONTEXT)
    shutil.copy(FIXTURES / "unknown-nested-key.yaml", policy_dir / "gamma.yaml")
    error = registry.reload()
    assert error is not None
    assert str(error) == "gamma.yaml: limits.webhooks.burts: unknown key"
    assert sorted(registry.current.tenants) == ["alpha", "beta"]


def test_a_bad_edit_keeps_its_tenant_while_the_good_edits_go_live(policy_dir: Path) -> None:
    """One reload, two edits: the broken file keeps its last good policy, the other is live."""
    registry = Registry(policy_dir, CONTEXT)
    alpha = registry.current.tenants["alpha"]
    (policy_dir / "alpha.yaml").write_text("twilio: [", encoding="utf-8")
    _gamma(policy_dir, "AC00000000000000000000000000000e05")
    beta = policy_dir / "beta.yml"
    beta.write_text(beta.read_text(encoding="utf-8").replace("+15550200001", "+15550200002"), encoding="utf-8")
    error = _swap(registry)
    assert error is not None and [p.file for p in error.problems] == ["alpha.yaml"]
    current = registry.current
    assert current.tenants["alpha"] is alpha
    assert sorted(current.tenants) == ["alpha", "beta", "gamma"]
    assert current.by_number["+15550200002"].id == "beta" and "+15550200001" not in current.by_number
    assert current.by_number["+15550100001"] is alpha


def test_a_number_moved_between_two_files_in_one_reload_is_accepted(policy_dir: Path) -> None:
    """Alpha gives +15550100002 up and beta takes it in the same reload: both edits go live."""
    registry = Registry(policy_dir, CONTEXT)
    alpha, beta = policy_dir / "alpha.yaml", policy_dir / "beta.yml"
    alpha.write_text(alpha.read_text(encoding="utf-8").replace(', "+15550100002"', ""), encoding="utf-8")
    text = beta.read_text(encoding="utf-8").replace('"+15550200001"', '"+15550200001", "+15550100002"')
    beta.write_text(text, encoding="utf-8")
    assert _swap(registry) is None
    assert registry.current.by_number["+15550100002"].id == "beta"


def test_a_broken_file_keeps_its_numbers_from_a_newcomer(policy_dir: Path) -> None:
    """Alpha's file breaks while a new file claims alpha's number: alpha's last good policy keeps
    the number and the newcomer is refused, naming the owner."""
    registry = Registry(policy_dir, CONTEXT)
    alpha = registry.current.tenants["alpha"]
    (policy_dir / "alpha.yaml").write_text("twilio: [", encoding="utf-8")
    _gamma(policy_dir, "AC00000000000000000000000000000e05")
    gamma = policy_dir / "gamma.yaml"
    gamma.write_text(gamma.read_text(encoding="utf-8").replace("+15550400001", "+15550100001"), encoding="utf-8")
    error = _swap(registry)
    assert error is not None
    assert [(p.file, p.message) for p in error.problems][-1] == (
        "gamma.yaml",
        "+15550100001 is already owned by alpha.yaml",
    )
    assert registry.current.by_number["+15550100001"] is alpha
    assert "gamma" not in registry.current.tenants


def test_an_edit_refused_whole_keeps_the_very_same_set(policy_dir: Path) -> None:
    """When every change is refused, requests keep the same PolicySet object (nothing swapped)."""
    registry = Registry(policy_dir, CONTEXT)
    before = registry.current
    (policy_dir / "alpha.yaml").write_text("twilio: [", encoding="utf-8")
    assert _swap(registry) is not None
    assert registry.current is before


def test_reload_with_a_broken_existing_file_keeps_its_old_policy(policy_dir: Path) -> None:
    """Breaking a loaded tenant's file keeps that tenant's last good policy in force."""
    registry = Registry(policy_dir, CONTEXT)
    alpha = registry.current.tenants["alpha"]
    (policy_dir / "alpha.yaml").write_text("twilio: [", encoding="utf-8")
    error = registry.reload()
    assert error is not None and error.problems[0].file == "alpha.yaml"
    assert registry.current.tenants["alpha"] is alpha


def test_reload_with_good_files_swaps_the_set(policy_dir: Path) -> None:
    """An added valid tenant appears after reload; a snapshot taken before is unchanged."""
    registry = Registry(policy_dir, CONTEXT)
    before = registry.current
    _gamma(policy_dir, "AC00000000000000000000000000000e05")
    assert registry.reload() is None
    assert sorted(registry.current.tenants) == ["alpha", "beta", "gamma"]
    assert registry.current.by_number["+15550400001"].id == "gamma"
    assert sorted(before.tenants) == ["alpha", "beta"]
    assert "+15550400001" not in before.by_number


def test_reload_after_removing_a_file_drops_the_tenant(policy_dir: Path) -> None:
    """A deleted policy file takes its tenant, numbers and SID out of the set."""
    registry = Registry(policy_dir, CONTEXT)
    (policy_dir / "beta.yml").unlink()
    assert registry.reload() is None
    assert sorted(registry.current.tenants) == ["alpha"]
    assert "+15550200001" not in registry.current.by_number
    assert BETA_SID not in registry.current.by_account


def test_reload_after_fixing_a_bad_file_swaps(policy_dir: Path) -> None:
    """Once the bad file is fixed, the next reload succeeds and brings in the new tenant."""
    registry = Registry(policy_dir, CONTEXT)
    shutil.copy(FIXTURES / "rate-zero.yaml", policy_dir / "gamma.yaml")
    assert registry.reload() is not None
    _gamma(policy_dir, "AC00000000000000000000000000000e05")
    assert registry.reload() is None
    assert "gamma" in registry.current.tenants


def test_reload_refuses_a_number_moved_to_two_owners(policy_dir: Path) -> None:
    """A new file claiming a number another tenant owns is refused; the old owner stays."""
    registry = Registry(policy_dir, CONTEXT)
    _gamma(policy_dir, "AC00000000000000000000000000000e05")
    gamma = policy_dir / "gamma.yaml"
    gamma.write_text(gamma.read_text(encoding="utf-8").replace("+15550400001", "+15550100001"), encoding="utf-8")
    error = registry.reload()
    assert error is not None
    assert str(error) == "gamma.yaml: numbers: +15550100001 is already owned by alpha.yaml"
    assert registry.current.by_number["+15550100001"].id == "alpha"
    assert "gamma" not in registry.current.tenants


def test_a_swap_tells_its_listeners_the_old_and_new_set(policy_dir: Path) -> None:
    """Each reload that changes the set calls the listeners with both sets; one refused whole calls none."""
    registry = Registry(policy_dir, CONTEXT)
    swaps: list[tuple[list[str], list[str]]] = []
    registry.on_swap(lambda old, new: swaps.append((sorted(old.tenants), sorted(new.tenants))))
    (policy_dir / "beta.yml").unlink()
    assert registry.reload() is None
    assert swaps == [(["alpha", "beta"], ["alpha"])]
    (policy_dir / "alpha.yaml").write_text("twilio: [", encoding="utf-8")
    prepared = registry.prepare()
    assert prepared is not None and registry.apply(prepared) is not None  # refused: the same set
    assert len(swaps) == 1
