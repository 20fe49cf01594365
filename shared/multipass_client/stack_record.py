"""The local stack's ``.multipass/`` directory as the client reads it: the gateway address and credentials.

``multipass up`` records its processes in ``stack.json`` (written by ``multipass_dev.stack``); every client
command reads it for the gateway address, the dev tenant's API key and the admin token. Secrets live in
their own files with mode 0600; ``stack.json`` names them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

#: Overrides the default ``./.multipass`` location of the local stack's directory.
STACK_DIR_ENV = "MULTIPASS_STACK_DIR"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50050"


@dataclass(frozen=True)
class StackPaths:
    """Where a local stack keeps its state, logs, data, models and credentials."""

    root: Path

    @classmethod
    def default(cls, environ: dict[str, str] | None = None) -> StackPaths:
        environ = os.environ if environ is None else environ
        return cls(Path(environ.get(STACK_DIR_ENV) or ".multipass").absolute())

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
    state = read_state(paths or StackPaths.default())
    return (state or {}).get("gateway_address") or DEFAULT_GATEWAY_ADDRESS


def dev_api_key(paths: StackPaths | None = None) -> str | None:
    """The dev tenant's API key that ``multipass up`` wrote, if any."""
    paths = paths or StackPaths.default()
    state = read_state(paths) or {}
    return read_secret(Path(state.get("api_key_file") or paths.api_key_file))


def admin_token(paths: StackPaths | None = None) -> str | None:
    paths = paths or StackPaths.default()
    state = read_state(paths) or {}
    return read_secret(Path(state.get("admin_token_file") or paths.admin_token_file))
