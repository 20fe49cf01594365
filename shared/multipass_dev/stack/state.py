"""Writing the local stack's ``stack.json`` record and its credential files, and checking its processes.

The supervisor writes ``stack.json`` (atomically) whenever a process changes state; the paths and the
reading side are the client's (:mod:`multipass_client.stack_record`), since every client command reads
the record for the gateway address and the dev tenant's API key.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

STATE_VERSION = 1


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
