"""An S3 endpoint on loopback: moto's standalone server (``moto[server]``), standing in for MinIO.

moto does not check signatures or credentials: test our own authorization, never S3's, against it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from multipass.local.process import (
    LOOPBACK,
    ManagedProcess,
    ServerStartError,
    find_binary,
    free_port,
    http_status,
)

PACKAGE = "moto[server]"
STARTUP_TIMEOUT = 30.0
_PORT_TRIES = 3


class S3ServerProcess:
    """``moto_server -H 127.0.0.1 -p PORT`` as a child process; ``endpoint`` is ``127.0.0.1:PORT``."""

    def __init__(self, port: int, log_dir: Path):
        self.port = port
        self._process = ManagedProcess(
            "moto_server",
            [str(find_binary("moto_server", PACKAGE)), "-H", LOOPBACK, "-p", str(port)],
            log_dir / f"moto-server-{port}.log",
        )

    @classmethod
    def start(
        cls, port: int = 0, *, log_dir: str | Path | None = None, timeout: float = STARTUP_TIMEOUT
    ) -> S3ServerProcess:
        """Start and wait until it answers HTTP. Port 0 picks a free port (retried on a clash)."""
        directory = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="multipass-s3-"))
        tries = _PORT_TRIES if port == 0 else 1
        for attempt in range(tries):
            server = cls(port or free_port(), directory)
            try:
                server._launch(timeout)
                return server
            except ServerStartError:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        self._process.spawn()
        self._process.wait_ready(self.answering, timeout)

    @property
    def endpoint(self) -> str:
        """``host:port``, the form ``MULTIPASS_S3_ENDPOINT`` takes."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def answering(self) -> bool:
        return http_status(f"{self.url}/moto-api/data.json", timeout=1.0) is not None

    def reset(self) -> None:
        """Forget every bucket and object (``POST /moto-api/reset``)."""
        status = http_status(f"{self.url}/moto-api/reset", method="POST", timeout=10.0)
        if status != 200:
            raise ServerStartError(f"moto reset answered {status}")

    def stop(self, timeout: float = 10.0) -> None:
        self._process.stop(timeout)

    def kill(self) -> None:
        self._process.kill()

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Stop and start on the same port; moto keeps its data in memory, so it comes back empty."""
        self.stop()
        self._launch(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung endpoint)."""
        self._process.pause()

    def resume(self) -> None:
        self._process.resume()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._process.paused():
            yield

    def __enter__(self) -> S3ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
