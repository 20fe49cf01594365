"""A small process manager: start processes in ordered groups, wait until each is healthy, restart crashes.

* ``start_group`` spawns a group of processes and waits until every one answers its health probe; a
  process that exits or stays unhealthy past its ``ready_timeout`` raises :class:`StartError` carrying
  the tail of its log, so the caller can say exactly what failed. One killed by a signal while starting
  (a native crash; its traceback stays in its log) is started once more before that.
* Once a group is up, a monitor thread supervises it: a process that exits is restarted after a delay
  that doubles with every quick failure (``RestartPolicy``); a run longer than ``stable_after`` resets the
  delay. Each restart is logged, written into the process's own log file, and counted.
* ``stop`` stops groups in reverse order: SIGTERM to each process group, SIGKILL after the grace period.

Every child runs in its own session (so a terminal's Ctrl-C reaches only the supervisor, which then stops
the children in order) and, on Linux, receives SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``, set
by :mod:`.orphan_guard` in a fresh interpreter that then execs the command, never by code run between
fork and exec in this threaded process; the kernel ties it to the forking thread, so children are
spawned by the caller's thread or the monitor thread, both of which outlive them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from multipass_dev.stack.health import HealthProbe

log = logging.getLogger(__name__)

STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, FAILED = (
    "starting",
    "running",
    "backoff",
    "stopping",
    "stopped",
    "failed",
)
#: Lines of a process's log quoted in a StartError.
TAIL_LINES = 40


@dataclass(frozen=True)
class RestartPolicy:
    """Restart delays: ``initial_delay * factor**(failures-1)``, capped at ``max_delay``.

    ``failures`` counts consecutive runs shorter than ``stable_after`` seconds. With ``max_failures`` set,
    a process that fails that many times in a row is given up (state ``failed``) instead of restarted.
    """

    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    stable_after: float = 30.0
    max_failures: int | None = None

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.initial_delay * self.factor ** max(0, failures - 1))


@dataclass(frozen=True)
class ProcessSpec:
    """What to run and how to tell that it is up. ``env`` is the child's whole environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    probe: HealthProbe | None = None
    ready_timeout: float = 60.0
    stop_grace: float = 10.0
    restart: RestartPolicy = RestartPolicy()
    #: Facts recorded for ``status`` (gRPC address, metrics URL, ...).
    info: Mapping[str, str] = field(default_factory=dict)
    #: Run once a restarted process is healthy again, before it counts as running (the in-memory S3
    #: endpoint gets back the buckets its restart lost); an error is logged and it is tried at the next check.
    after_restart: Callable[[], None] | None = None


@dataclass(frozen=True)
class ProcessStatus:
    """A snapshot of one supervised process."""

    name: str
    state: str
    pid: int | None
    restarts: int
    healthy: bool
    last_exit: str | None
    log_path: str
    info: Mapping[str, str]
    probe: HealthProbe | None
    argv: tuple[str, ...] = ()


class StartError(RuntimeError):
    """A process did not come up: why, and the tail of its log."""

    def __init__(self, name: str, reason: str, log_tail: str, log_path: Path):
        super().__init__(f"{name} {reason}")
        self.name = name
        self.reason = reason
        self.log_tail = log_tail
        self.log_path = log_path

    def describe(self) -> str:
        tail = self.log_tail.rstrip() or "(empty log)"
        return f"{self.name} {self.reason}\n--- last lines of {self.log_path} ---\n{tail}"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


#: The script every child is started through (PR_SET_PDEATHSIG without a preexec_fn).
ORPHAN_GUARD = Path(__file__).with_name("orphan_guard.py")


def guarded(argv: Sequence[str]) -> list[str]:
    """``argv`` run through :data:`ORPHAN_GUARD`: the command, SIGTERMed when this process dies."""
    return [sys.executable, "-I", "-S", str(ORPHAN_GUARD), str(os.getpid()), *argv]


@dataclass(eq=False)
class _Managed:
    spec: ProcessSpec
    log_path: Path
    popen: subprocess.Popen | None = None
    state: str = STOPPED
    restarts: int = 0
    failures: int = 0
    healthy: bool = False
    last_exit: str | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    checked_at: float = 0.0
    #: Set once the process first came up; from then on the monitor thread owns it.
    supervised: bool = False
    #: A start that died by a signal is tried once more.
    start_retried: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def snapshot(self) -> ProcessStatus:
        return ProcessStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.pid if self.alive() else None,
            restarts=self.restarts,
            healthy=self.healthy,
            last_exit=self.last_exit,
            log_path=str(self.log_path),
            info=dict(self.spec.info),
            probe=self.spec.probe,
            argv=tuple(self.spec.argv),
        )


class Supervisor:
    """Runs groups of processes, restarts the ones that crash, stops them all in reverse order."""

    def __init__(
        self,
        log_dir: Path,
        *,
        on_change: Callable[[list[ProcessStatus]], None] | None = None,
        poll_interval: float = 0.2,
        health_interval: float = 5.0,
    ):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._health_interval = health_interval
        self._groups: list[list[_Managed]] = []
        self._by_name: dict[str, _Managed] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- starting ---------------------------------------------------------------------------------

    def start_group(self, specs: Sequence[ProcessSpec]) -> None:
        """Spawn every process of the group, then wait until each is healthy (or raise StartError)."""
        if self._stopping.is_set():
            raise RuntimeError("supervisor is stopping")
        group = []
        with self._lock:
            for spec in specs:
                if spec.name in self._by_name:
                    raise ValueError(f"a process named {spec.name!r} is already supervised")
                managed = _Managed(spec=spec, log_path=self.log_dir / f"{spec.name}.log")
                self._by_name[spec.name] = managed
                group.append(managed)
            self._groups.append(group)
        for managed in group:
            try:
                self._spawn(managed)
            except OSError as error:
                managed.state = FAILED
                raise StartError(
                    managed.spec.name, f"could not be started: {error}", "", managed.log_path
                ) from error
        self._notify()
        self._wait_ready(group)
        self._ensure_monitor()

    def _wait_ready(self, group: list[_Managed]) -> None:
        pending = list(group)
        while pending:
            for managed in list(pending):
                spec = managed.spec
                returncode = managed.popen.poll() if managed.popen else None
                if returncode is not None and returncode < 0 and not managed.start_retried:
                    # Killed by a signal before it was up (a native crash at import time): once more,
                    # with the first attempt's log, faulthandler's traceback included, kept above.
                    managed.start_retried = True
                    why = f"exited with {describe_exit(returncode)} while starting"
                    log.warning("%s %s; starting it once more", spec.name, why)
                    self._append_log(managed, f"{why}; starting it once more")
                    self._spawn(managed)
                    continue
                if returncode is not None:
                    managed.state = FAILED
                    managed.last_exit = describe_exit(returncode)
                    self._notify()
                    reason = f"exited with {managed.last_exit} while starting"
                    raise StartError(spec.name, reason, log_tail(managed.log_path), managed.log_path)
                if spec.probe is None or spec.probe.check(timeout=1.0):
                    with self._lock:
                        managed.state, managed.healthy, managed.supervised = RUNNING, True, True
                        managed.checked_at = time.monotonic()
                    log.info("%s is up (pid %s)", spec.name, managed.pid)
                    pending.remove(managed)
                    self._notify()
                elif time.monotonic() - managed.started_at > spec.ready_timeout:
                    reason = f"was not healthy after {spec.ready_timeout:.0f} s ({spec.probe.kind} probe of {spec.probe.target})"
                    raise StartError(spec.name, reason, log_tail(managed.log_path), managed.log_path)
            if pending and self._stopping.wait(self._poll_interval):
                raise StartError(pending[0].spec.name, "start interrupted by stop", "", pending[0].log_path)

    def _spawn(self, managed: _Managed) -> None:
        spec = managed.spec
        with managed.log_path.open("ab", buffering=0) as log_file:
            managed.popen = subprocess.Popen(
                guarded(spec.argv),
                # A Python child that crashes in native code leaves its traceback in its log.
                env={"PYTHONFAULTHANDLER": "1", **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        managed.state, managed.healthy = STARTING, False
        managed.started_at = time.monotonic()

    # -- supervising ------------------------------------------------------------------------------

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._monitor_loop, name="supervisor-monitor", daemon=True
                )
                self._monitor.start()

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(self._poll_interval):
            for managed in self._supervised():
                try:
                    changed = self._tick(managed)
                except Exception:  # noqa: BLE001 - the monitor must outlive any one bad tick
                    log.exception("supervising %s failed", managed.spec.name)
                    changed = False
                if changed:
                    self._notify()

    def _supervised(self) -> list[_Managed]:
        with self._lock:
            return [
                m
                for group in self._groups
                for m in group
                if m.supervised and m.state in (RUNNING, STARTING, BACKOFF)
            ]

    def _tick(self, managed: _Managed) -> bool:
        """One supervision step for one process; True when its state changed."""
        spec, now = managed.spec, time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return False
            if managed.state in (RUNNING, STARTING):
                returncode = managed.popen.poll() if managed.popen else 0
                if returncode is not None:
                    self._on_exit(managed, returncode, now)
                    return True
            if managed.state == BACKOFF and now >= managed.restart_at:
                self._restart(managed)
                return True
        if managed.state == STARTING:
            if spec.probe is None or spec.probe.check(timeout=1.0):
                if spec.after_restart is not None and managed.restarts:
                    try:
                        spec.after_restart()
                    except Exception as error:  # noqa: BLE001 - tried again at the next check
                        log.warning("%s: after restart: %s", spec.name, error)
                        return False
                with self._lock:
                    if managed.state == STARTING:
                        managed.state, managed.healthy = RUNNING, True
                        managed.checked_at = now
                log.info(
                    "%s is healthy again after restart %d (pid %s)", spec.name, managed.restarts, managed.pid
                )
                return True
            if now - managed.started_at > spec.ready_timeout:
                log.warning("%s not healthy %.0f s after restart; killing it", spec.name, spec.ready_timeout)
                self._signal(managed, signal.SIGKILL)
            return False
        if (
            managed.state == RUNNING
            and spec.probe is not None
            and now - managed.checked_at >= self._health_interval
        ):
            healthy = spec.probe.check(timeout=1.0)
            managed.checked_at = now
            if healthy != managed.healthy:
                managed.healthy = healthy
                log.warning("%s health changed: %s", spec.name, "healthy" if healthy else "unhealthy")
                return True
        return False

    def _on_exit(self, managed: _Managed, returncode: int, now: float) -> None:
        spec, policy = managed.spec, managed.spec.restart
        ran_for = now - managed.started_at
        managed.last_exit = describe_exit(returncode)
        managed.healthy = False
        managed.failures = managed.failures + 1 if ran_for < policy.stable_after else 1
        if policy.max_failures is not None and managed.failures >= policy.max_failures:
            managed.state = FAILED
            log.error(
                "%s exited with %s; %d quick failures in a row, giving up",
                spec.name,
                managed.last_exit,
                managed.failures,
            )
            self._append_log(
                managed, f"exited with {managed.last_exit}; gave up after {managed.failures} quick failures"
            )
            return
        delay = policy.delay(managed.failures)
        managed.state, managed.restart_at = BACKOFF, now + delay
        log.warning(
            "%s exited with %s after %.1f s; restart %d in %.2f s",
            spec.name,
            managed.last_exit,
            ran_for,
            managed.restarts + 1,
            delay,
        )

    def _restart(self, managed: _Managed) -> None:
        managed.restarts += 1
        self._append_log(managed, f"restart {managed.restarts} after {managed.last_exit}")
        try:
            self._spawn(managed)
        except OSError as error:
            log.error("%s could not be restarted: %s", managed.spec.name, error)
            managed.last_exit = f"spawn failed: {error}"
            self._on_exit(managed, 127, time.monotonic())
            return
        log.warning("%s restarted (restart %d, pid %s)", managed.spec.name, managed.restarts, managed.pid)

    def _append_log(self, managed: _Managed, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with contextlib.suppress(OSError), managed.log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- supervisor {stamp}Z: {managed.spec.name} {message} ---\n")

    # -- inspecting -------------------------------------------------------------------------------

    def snapshot(self) -> list[ProcessStatus]:
        with self._lock:
            return [m.snapshot() for group in self._groups for m in group]

    def status(self, name: str) -> ProcessStatus:
        with self._lock:
            return self._by_name[name].snapshot()

    def _notify(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(self.snapshot())
        except Exception:  # noqa: BLE001 - a failing observer must not stop supervision
            log.exception("state observer failed")

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop supervising, then stop every group in reverse start order (SIGTERM, SIGKILL after grace)."""
        self._stopping.set()
        with self._lock:
            groups = [list(group) for group in reversed(self._groups)]
        for group in groups:
            self._stop_group(group)
        # Joined last: on Linux the death signal follows the thread that forked a child, so the children the
        # monitor restarted must be stopped (in order) before their thread ends.
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=10)
        self._notify()

    def _stop_group(self, group: list[_Managed]) -> None:
        with self._lock:
            alive = [m for m in group if m.alive()]
            for managed in group:
                managed.state = STOPPING if managed in alive else STOPPED
        for managed in alive:
            self._signal(managed, signal.SIGTERM)
        deadline = time.monotonic() + max((m.spec.stop_grace for m in alive), default=0)
        for managed in alive:
            try:
                managed.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0f s; killing it", managed.spec.name, managed.spec.stop_grace
                )
                self._signal(managed, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    managed.popen.wait(timeout=5)
            managed.state, managed.healthy = STOPPED, False
            if managed.popen.returncode is not None:
                managed.last_exit = describe_exit(managed.popen.returncode)
            log.info("%s stopped (%s)", managed.spec.name, managed.last_exit)

    @staticmethod
    def _signal(managed: _Managed, signum: int) -> None:
        """Signal the child's process group (its own session), falling back to the child alone."""
        if managed.popen is None or managed.popen.poll() is not None:
            return
        try:
            os.killpg(managed.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                managed.popen.send_signal(signum)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()
