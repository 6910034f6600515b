"""Process settings from the environment and command-line flags; errors name the key and value."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    public_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 1
    access_log: bool = True
    reload_interval: float = 2.0
    instance_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"port: {self.port} is not a TCP port (1-65535)")
        if self.workers < 1:
            raise SettingsError(f"workers: {self.workers} must be at least 1")
        if self.reload_interval < 0:
            raise SettingsError(f"reload_interval: {self.reload_interval} must be >= 0")


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


_READERS: dict[str, Callable[[str, str], object]] = {
    "policies_dir": lambda _k, v: Path(v),
    "host": lambda _k, v: v,
    "port": lambda k, v: _env_number(k, v, int),
    "limiter_url": lambda _k, v: v,
    "public_url": lambda _k, v: v,
    "trusted_proxies": _csv,
    "workers": lambda k, v: _env_number(k, v, int),
    "access_log": _env_bool,
    "reload_interval": lambda k, v: _env_number(k, v, float),
    "instance_id": lambda _k, v: v,
}


def from_env(env: Mapping[str, str], **flags: object) -> Settings:
    """Settings from SWITCHYARD_* variables, overridden by flags that are not None."""
    unknown = set(flags) - set(_READERS)
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, read in _READERS.items():
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = read(key, env[key])
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)
