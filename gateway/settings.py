"""Process settings from the environment and command-line flags; errors name the key and value."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth.public_url import PublicUrl

ENV_PREFIX = "SWITCHYARD_"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the key and the value."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a gateway process needs to start; built once, never mutated."""

    policies_dir: Path = Path("policies")
    host: str = "127.0.0.1"
    port: int = 8080
    limiter_url: str = "memory://"
    public_urls: tuple[str, ...] = ()  # the base URL(s) Twilio calls; signatures are checked against them
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 1
    access_log: bool = True
    reload_interval: float = 2.0
    grace_period: float = 10.0  # seconds a SIGTERM leaves requests in flight; Twilio waits 15 s in all
    # A Media Stream's slot (concurrent_streams) is renewed every third of this while it is open:
    # an instance that dies holding slots frees them within this long.
    stream_lease_ttl: float = 30.0
    instance_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"port: {self.port} is not a TCP port (1-65535)")
        if self.workers < 1:
            raise SettingsError(f"workers: {self.workers} must be at least 1")
        if self.reload_interval < 0:
            raise SettingsError(f"reload_interval: {self.reload_interval} must be >= 0")
        if not 0 <= self.grace_period < float("inf"):  # NaN fails this too
            raise SettingsError(f"grace_period: {self.grace_period} must be a number of seconds >= 0")
        if not 1 <= self.stream_lease_ttl <= 3600:  # NaN fails this too
            raise SettingsError(f"stream_lease_ttl: {self.stream_lease_ttl} must be 1-3600 seconds")
        if isinstance(self.public_urls, str):
            raise SettingsError(f"public_urls: {self.public_urls!r} must be a tuple of URLs, not one string")
        try:
            PublicUrl(self.public_urls)
        except ValueError as exc:
            raise SettingsError(f"public_urls: {exc}") from None


def _env_bool(key: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{key}: {raw!r} is not a boolean (true/false)")


def _env_number(key: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{key}: {raw!r} is not a {kind.__name__}") from None


def _csv(_key: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _public_urls(key: str, raw: str) -> tuple[str, ...]:
    urls = _csv(key, raw)
    try:
        PublicUrl(urls)
    except ValueError as exc:
        raise SettingsError(f"{key}: {exc}") from None
    return urls


# Each setting, the SWITCHYARD_* variable that sets it (named like its `serve` flag), and its reader.
_VARIABLES: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "policies_dir": ("POLICIES", lambda _k, v: Path(v)),
    "host": ("HOST", lambda _k, v: v),
    "port": ("PORT", lambda k, v: _env_number(k, v, int)),
    "limiter_url": ("LIMITER", lambda _k, v: v),
    "public_urls": ("PUBLIC_URL", _public_urls),  # comma-separated, as --public-url given several times
    "trusted_proxies": ("TRUSTED_PROXIES", _csv),
    "workers": ("WORKERS", lambda k, v: _env_number(k, v, int)),
    "access_log": ("ACCESS_LOG", _env_bool),
    "reload_interval": ("RELOAD_INTERVAL", lambda k, v: _env_number(k, v, float)),
    "grace_period": ("GRACE_PERIOD", lambda k, v: _env_number(k, v, float)),
    "stream_lease_ttl": ("STREAM_LEASE_TTL", lambda k, v: _env_number(k, v, float)),
    "instance_id": ("INSTANCE_ID", lambda _k, v: v),
}
# Secrets are read where they are used, from the environment only, never kept in Settings.
ADMIN_TOKEN_VARIABLE = ENV_PREFIX + "ADMIN_TOKEN"  # the operators' bearer token for /api/v1/admin/cost
TWILIO_API_BASE_VARIABLE = ENV_PREFIX + "TWILIO_API_BASE"  # Twilio's REST API elsewhere (a stand-in, a proxy)
VARIABLES = frozenset(ENV_PREFIX + name for name, _ in _VARIABLES.values()) | {
    ADMIN_TOKEN_VARIABLE,
    TWILIO_API_BASE_VARIABLE,
}
PUBLIC_URL_VARIABLE = ENV_PREFIX + _VARIABLES["public_urls"][0]


def public_urls_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """The URLs SWITCHYARD_PUBLIC_URL lists (comma-separated); () when it is unset."""
    raw = env.get(PUBLIC_URL_VARIABLE)
    return () if raw is None else _public_urls(PUBLIC_URL_VARIABLE, raw)


def from_env(env: Mapping[str, str], **flags: object) -> Settings:
    """Settings from SWITCHYARD_* variables, overridden by flags that are not None."""
    unknown = set(flags) - set(_VARIABLES)
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    # A misspelt variable must not pass silently: SWITCHYARD_LIMITR would leave limits per process.
    stray = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in VARIABLES)
    if stray:
        known = ", ".join(sorted(VARIABLES))
        raise SettingsError(f"unknown variable(s) {', '.join(stray)}; switchyard reads {known}")
    values: dict[str, Any] = {}
    for name, (suffix, read) in _VARIABLES.items():
        key = ENV_PREFIX + suffix
        if key in env:
            values[name] = read(key, env[key])
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)
