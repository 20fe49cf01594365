"""The local stack's ``.multipass/`` directory as the client reads it: the gateway address and credentials.

``multipass up`` records its processes in ``stack.json`` (written by ``multipass_dev.stack``); every client
command reads it for the gateway address, the dev tenant's API key and the admin token. Secrets live in
their own files with mode 0600; ``stack.json`` names them.

Where the stack is (:meth:`StackPaths.locate`), first match wins: ``$MULTIPASS_STACK_DIR`` (the directory
itself), ``$MULTIPASS_HOME/.multipass`` (the directory ``make run`` ran in); either one, when set, is the
only place looked at. Otherwise the ``.multipass/`` of the working directory or one of its parents, then
that of the checkout (or virtual environment) the installed package lives in, so that commands work from
any directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Overrides the default ``./.multipass`` location of the local stack's directory.
STACK_DIR_ENV = "MULTIPASS_STACK_DIR"
#: The directory whose ``.multipass/`` holds the local stack (where ``make run`` / ``multipass up`` ran).
HOME_ENV = "MULTIPASS_HOME"
STACK_DIR_NAME = ".multipass"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50050"


@dataclass(frozen=True)
class StackPaths:
    """Where a local stack keeps its state, logs, data, models and credentials."""

    root: Path

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> StackPaths:
        """Where ``multipass up`` puts a new stack: ``$MULTIPASS_STACK_DIR``, ``$MULTIPASS_HOME/.multipass``,
        else ``./.multipass``."""
        environ = os.environ if environ is None else environ
        if environ.get(STACK_DIR_ENV):
            return cls(Path(environ[STACK_DIR_ENV]).expanduser().absolute())
        if environ.get(HOME_ENV):
            return cls(Path(environ[HOME_ENV]).expanduser().absolute() / STACK_DIR_NAME)
        return cls(Path(STACK_DIR_NAME).absolute())

    @classmethod
    def candidates(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        package_dir: Path | None = None,
    ) -> list[StackPaths]:
        """Every place :meth:`locate` looks, in order."""
        environ = os.environ if environ is None else environ
        if environ.get(STACK_DIR_ENV) or environ.get(HOME_ENV):
            return [cls.default(environ)]
        start = (cwd or Path.cwd()).absolute()
        package = (package_dir or Path(__file__).resolve().parent).absolute()
        found: list[StackPaths] = []
        for directory in (start, *start.parents, package, *package.parents):
            paths = cls(directory / STACK_DIR_NAME)
            if paths not in found:
                found.append(paths)
        return found

    @classmethod
    def locate(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        package_dir: Path | None = None,
    ) -> StackPaths | None:
        """The recorded local stack (the first candidate holding ``stack.json``), or None."""
        for paths in cls.candidates(environ, cwd=cwd, package_dir=package_dir):
            if paths.state_file.is_file():
                return paths
        return None

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None) -> StackPaths:
        """The recorded local stack, else where a new one would go."""
        return cls.locate(environ) or cls.default(environ)

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"

    @property
    def data(self) -> Path:
        """Per-run data (the JetStream store); wiped by every ``up``."""
        return self.root / "data"

    @property
    def models(self) -> Path:
        """Tiny random models, built once and kept across runs."""
        return self.root / "models"

    @property
    def api_key_file(self) -> Path:
        return self.root / "dev-api-key"

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin-token"

    @property
    def callback_key_file(self) -> Path:
        return self.root / "callback-signing-key"


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def read_state(paths: StackPaths) -> dict | None:
    """The recorded stack, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(paths.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gateway_address(paths: StackPaths | None = None) -> str:
    """The recorded gateway address of the local stack, else the default one."""
    state = read_state(paths or StackPaths.current())
    return (state or {}).get("gateway_address") or DEFAULT_GATEWAY_ADDRESS


def dev_api_key(paths: StackPaths | None = None) -> str | None:
    """The dev tenant's API key that ``multipass up`` wrote, if any."""
    paths = paths or StackPaths.current()
    state = read_state(paths) or {}
    return read_secret(Path(state.get("api_key_file") or paths.api_key_file))


def admin_token(paths: StackPaths | None = None) -> str | None:
    paths = paths or StackPaths.current()
    state = read_state(paths) or {}
    return read_secret(Path(state.get("admin_token_file") or paths.admin_token_file))


def no_stack_hint(searched: list[StackPaths]) -> str:
    """What to do when no local stack is recorded in any of the ``searched`` places."""
    places = ", ".join(str(p.root) for p in searched[:3]) + (", ..." if len(searched) > 3 else "")
    return (
        f"no local stack found (looked in {places}); start one with `make run` or `multipass up --detach` "
        f"in the Multipass checkout, or set {HOME_ENV} to the directory that holds its {STACK_DIR_NAME}/ "
        f"({STACK_DIR_ENV} to that {STACK_DIR_NAME}/ itself)"
    )
