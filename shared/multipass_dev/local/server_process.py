"""What the local servers (nats-server, the S3 endpoint) share: one child process, driven like a server."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from multipass_dev.local.process import ManagedProcess, ServerStartError

PORT_TRIES = 3

ServerT = TypeVar("ServerT", bound="LocalServer")


class LocalServer(ABC):
    """A server child process: start with free-port retries, stop, kill, restart in place, pause."""

    _process: ManagedProcess

    @abstractmethod
    def _ready(self) -> bool:
        """Whether the server answers (health endpoint, HTTP)."""

    def _prepare(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Work before each launch (e.g. create the storage directory)."""

    def _launch(self, timeout: float) -> None:
        self._prepare()
        self._process.spawn()
        self._process.wait_ready(self._ready, timeout)

    @staticmethod
    def _start_with_retries(make: Callable[[], ServerT], timeout: float, tries: int) -> ServerT:
        """Build and launch servers until one binds (free ports can be taken between pick and bind)."""
        for attempt in range(tries):
            server = make()
            try:
                server._launch(timeout)
                return server
            except ServerStartError:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM)."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        self._process.kill()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again on the same ports."""
        self.stop()
        self._launch(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers (a hung server)."""
        self._process.pause()

    def resume(self) -> None:
        self._process.resume()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._process.paused():
            yield

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
