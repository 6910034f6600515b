"""Settings come from SWITCHYARD_* variables and flags; errors name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, from_env, public_urls_from_env


def test_flags_override_environment() -> None:
    """A flag that is given wins over the variable; an unset flag (None) does not."""
    env = {"SWITCHYARD_PORT": "9000", "SWITCHYARD_HOST": "0.0.0.0", "SWITCHYARD_TRUSTED_PROXIES": "10.0.0.0/8, ::1/128"}
    settings = from_env(env, port=9100, host=None)
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1/128")
    assert settings.policies_dir == Path("policies")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SWITCHYARD_PORT": "http"}, "SWITCHYARD_PORT: 'http' is not a int"),
        ({"SWITCHYARD_PORT": "70000"}, "port: 70000 is not a TCP port"),
        ({"SWITCHYARD_ACCESS_LOG": "maybe"}, "SWITCHYARD_ACCESS_LOG: 'maybe' is not a boolean"),
        ({"SWITCHYARD_WORKERS": "0"}, "workers: 0 must be at least 1"),
    ],
    ids=["port-not-int", "port-range", "bool", "workers"],
)
def test_bad_values_name_key_and_value(env: dict[str, str], message: str) -> None:
    """Each bad value is refused with its key and value in the message."""
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        from_env(env)


def test_variables_are_named_like_the_flags() -> None:
    """SWITCHYARD_LIMITER and SWITCHYARD_POLICIES set what --limiter and --policies set."""
    settings = from_env({"SWITCHYARD_LIMITER": "redis://r:6379/0", "SWITCHYARD_POLICIES": "/etc/p"})
    assert settings.limiter_url == "redis://r:6379/0"
    assert settings.policies_dir == Path("/etc/p")


def test_misspelt_variable_is_refused() -> None:
    """An unknown SWITCHYARD_* variable stops start-up instead of being ignored."""
    with pytest.raises(SettingsError, match=r"unknown variable.*SWITCHYARD_LIMITER_URL.*SWITCHYARD_LIMITER"):
        from_env({"SWITCHYARD_LIMITER_URL": "redis://r:6379/0"})


def test_unknown_flag_is_refused() -> None:
    """A misspelt setting is an error, not silently ignored."""
    with pytest.raises(SettingsError, match="unknown setting"):
        from_env({}, prot=1)


def test_public_url_variable_lists_several() -> None:
    """SWITCHYARD_PUBLIC_URL is comma-separated; --public-url flags (a tuple) replace it; unset means none."""
    env = {"SWITCHYARD_PUBLIC_URL": " https://gw.example.com , https://voice.example.org/edge,"}
    assert from_env(env).public_urls == ("https://gw.example.com", "https://voice.example.org/edge")
    assert from_env(env, public_urls=("https://other.example",)).public_urls == ("https://other.example",)
    assert from_env({}).public_urls == ()
    assert public_urls_from_env(env) == ("https://gw.example.com", "https://voice.example.org/edge")
    assert public_urls_from_env({}) == ()


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        pytest.param(
            {"SWITCHYARD_PUBLIC_URL": "https://ok.example,gw.example.com"},
            {},
            "SWITCHYARD_PUBLIC_URL: public base URL 'gw.example.com' must be an absolute",
            id="variable",
        ),
        pytest.param({}, {"public_urls": ("ftp://gw.example.com",)}, "public_urls: public base URL 'ftp://", id="flag"),
        pytest.param({}, {"public_urls": "https://gw.example.com"}, "public_urls: 'https://gw.example.com'", id="str"),
    ],
)
def test_bad_public_url_names_key_and_value(env: dict[str, str], flags: dict[str, object], message: str) -> None:
    """A public URL that is not an absolute http(s) base is refused with its key and value."""
    with pytest.raises(SettingsError, match=message):
        from_env(env, **flags)
    if env:  # `check` reads the variable alone, with the same message
        with pytest.raises(SettingsError, match=message):
            public_urls_from_env(env)
