"""Reading settings from ``MULTIPASS_*`` environment variables, once, with precise failures.

Each service defines one frozen settings dataclass with a ``from_env`` class method that uses
:class:`EnvReader`; a missing or malformed variable raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from multipass.errors import ConfigError, Violation
from multipass.redaction import redact_url

PREFIX = "MULTIPASS_"


class EnvReader:
    """Typed access to prefixed environment variables; collects every problem before failing."""

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = PREFIX):
        self._env = dict(os.environ if environ is None else environ)
        self._prefix = prefix
        self._problems: list[Violation] = []

    def _raw(self, name: str) -> str | None:
        value = self._env.get(self._prefix + name)
        return value if value not in (None, "") else None

    def _bad(self, name: str, value: str, allowed: str) -> None:
        self._problems.append(Violation(self._prefix + name, f"got {value!r}; expected {allowed}"))

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._raw(name)
        if value is None:
            if required:
                self._problems.append(Violation(self._prefix + name, "is required but not set"))
            return default or ""
        return value

    def int(self, name: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self._bad(name, raw, "an integer")
            return default
        if (min is not None and value < min) or (max is not None and value > max):
            self._bad(name, raw, f"an integer in {min}..{max}")
            return default
        return value

    def float(
        self, name: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self._bad(name, raw, "a number")
            return default
        if (min is not None and value < min) or (max is not None and value > max):
            self._bad(name, raw, f"a number in {min}..{max}")
            return default
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self._bad(name, raw, "true/false/1/0")
        return default

    def path(self, name: str, default: str | Path | None = None, *, must_exist: bool = False) -> Path | None:
        raw = self._raw(name)
        if raw is None:
            return Path(default) if default is not None else None
        path = Path(raw).expanduser()
        if must_exist and not path.exists():
            self._bad(name, raw, "an existing path")
        return path

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        raw = self._raw(name) or default
        parsed = urlparse(raw)
        if parsed.scheme not in schemes or not parsed.netloc:
            self._bad(name, redact_url(raw), f"a URL with scheme {'/'.join(schemes)}")
        return raw

    def address(self, name: str, default: str) -> str:
        """A ``host:port`` network address (no scheme), e.g. ``127.0.0.1:9000`` or ``[::1]:9000``."""
        raw = self._raw(name) or default
        host, sep, port = raw.rpartition(":")
        host_ok = bool(host) and "/" not in host and not any(c.isspace() for c in host)
        if not sep or not host_ok or not port.isdigit() or not 0 < int(port) < 65536:
            self._bad(name, raw, "host:port with a port in 1..65535")
        return raw

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw not in choices:
            self._bad(name, raw, "one of " + ", ".join(choices))
            return default
        return raw

    def csv(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def check(self) -> None:
        """Raise one ConfigError naming every bad variable read so far."""
        if self._problems:
            names = ", ".join(v.field for v in self._problems)
            raise ConfigError(f"bad configuration: {names}", violations=self._problems)
