"""Running the local stack from the command line: foreground, detached (setsid daemon), down, status."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from multipass_client.stack_record import StackPaths, read_state
from multipass_dev.stack.health import HealthProbe
from multipass_dev.stack.local_stack import LocalStack, StackConfig, StackError
from multipass_dev.stack.state import pid_alive, supervisor_alive
from multipass_dev.stack.supervisor import log_tail

#: How long ``down`` waits for the supervisor to stop its processes before killing what is left.
DOWN_TIMEOUT = 60.0


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM and SIGINT."""


def run_in_foreground(config: StackConfig, on_progress: Callable[[str], None] | None = None) -> int:
    """Start the stack and supervise it until SIGINT/SIGTERM; then stop everything. Returns an exit status."""

    def on_term(signum, frame):
        raise _Stop()

    # Both explicitly: a shell's background job starts with SIGINT ignored.
    previous = signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    stack = LocalStack(config, on_progress=on_progress)
    status = 0
    try:
        try:
            stack.start()
        except StackError as error:
            (on_progress or print)(f"the local stack failed to start:\n{error}")
            return 1
        forever = threading.Event()
        while not forever.wait(3600):
            pass
    except KeyboardInterrupt:
        (on_progress or print)("signal received")
        status = 0 if stack.status == "running" else 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if not stack.supervisor.stopping:
                stack.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    return status


def spawn_detached(paths: StackPaths, environ: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m multipass_dev.stack.daemon`` in its own session, logging to ``logs/supervisor.log``."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    with paths.supervisor_log.open("wb") as log_file:  # one run per log, like the processes' logs
        return subprocess.Popen(
            [sys.executable, "-m", "multipass_dev.stack.daemon", "--root", str(paths.root)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(os.environ if environ is None else environ),
        )


def wait_until_up(
    paths: StackPaths,
    daemon: subprocess.Popen,
    on_progress: Callable[[str], None],
    timeout: float = 1800.0,
) -> dict:
    """Follow ``stack.json`` until the daemon reports the stack running; raise StackError if it fails."""
    deadline = time.monotonic() + timeout
    phase, up = None, set()
    while True:
        state = read_state(paths) or {}
        mine = state.get("supervisor_pid") == daemon.pid
        if mine:
            for name, process in (state.get("processes") or {}).items():
                if process.get("state") == "running" and name not in up:
                    up.add(name)
                    on_progress(f"  {name} is up (pid {process.get('pid')})")
            if state.get("phase") != phase and state.get("status") != "failed":
                phase = state.get("phase")
                on_progress(phase)
            if state.get("status") == "running":
                return state
            if state.get("status") == "failed":
                raise StackError(state.get("error") or "the stack failed to start")
        if daemon.poll() is not None:
            raise StackError(
                f"the stack supervisor exited with status {daemon.returncode} before the stack was up\n"
                f"--- last lines of {paths.supervisor_log} ---\n{log_tail(paths.supervisor_log)}"
            )
        if time.monotonic() > deadline:
            raise StackError(f"the stack was not up after {timeout:.0f} s; see {paths.logs}")
        time.sleep(0.25)


def running_supervisor(paths: StackPaths) -> int | None:
    """The pid of the live supervisor of the stack recorded under ``paths``, if any."""
    state = read_state(paths) or {}
    if state.get("status") in ("starting", "running") and supervisor_alive(state):
        return state["supervisor_pid"]
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _ours(pid: int | None, argv: list[str]) -> bool:
    """A recorded process is still alive *and* still the program we started (not a reused pid)."""
    return bool(pid) and pid_alive(pid) and bool(argv) and _cmdline(pid) == list(argv)


def stop_stack(
    paths: StackPaths, timeout: float = DOWN_TIMEOUT, on_progress: Callable[[str], None] = print
) -> bool:
    """SIGTERM the supervisor (which stops its processes in order), then SIGTERM/SIGKILL any leftover.

    Returns False when no stack was recorded."""
    state = read_state(paths)
    if not state:
        return False
    supervisor = state.get("supervisor_pid")
    if supervisor and supervisor != os.getpid() and supervisor_alive(state):
        on_progress(f"stopping the supervisor (pid {supervisor})")
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(supervisor):
            on_progress(f"the supervisor did not stop within {timeout:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
    leftovers = [
        (name, process["pid"])
        for name, process in ((read_state(paths) or state).get("processes") or {}).items()
        if _ours(process.get("pid"), process.get("argv") or [])
    ]
    for name, pid in leftovers:
        on_progress(f"stopping leftover {name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for _, pid in leftovers) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _name, pid in leftovers:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return True


def live_status(paths: StackPaths) -> dict | None:
    """``stack.json`` with each process's health probed now and the supervisor's liveness."""
    state = read_state(paths)
    if state is None:
        return None
    state["supervisor_alive"] = supervisor_alive(state)
    processes = state.get("processes") or {}

    def probe(item):
        name, process = item
        spec = process.get("probe")
        alive = pid_alive(process.get("pid"))
        healthy = alive and (spec is None or HealthProbe.from_dict(spec).check(timeout=1.0))
        return name, alive, healthy

    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        for name, alive, healthy in pool.map(probe, processes.items()):
            processes[name]["alive"] = alive
            processes[name]["health"] = "SERVING" if healthy else ("NOT_SERVING" if alive else "DOWN")
    return state
