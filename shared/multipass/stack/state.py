"""The ``.multipass/`` directory of a local stack and its ``stack.json`` record.

``stack.json`` is written (atomically) by the supervisor whenever a process changes state, and read by
every client command for the gateway address and the dev tenant's API key file. Secrets live in their own
files with mode 0600; ``stack.json`` names them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Overrides the default ``./.multipass`` location of the local stack's directory.
STACK_DIR_ENV = "MULTIPASS_STACK_DIR"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50050"
STATE_VERSION = 1


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


def write_json_atomic(path: Path, data: dict, mode: int = 0o600) -> None:
    """Write ``data`` so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_secret(path: Path, value: str) -> None:
    """A credential file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)


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


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def supervisor_alive(state: dict) -> bool:
    """The recorded supervisor still runs and is still a Multipass process (not a reused pid)."""
    pid = state.get("supervisor_pid")
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: trust the pid
    return b"multipass" in cmdline


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
