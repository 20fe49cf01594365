"""An S3 endpoint on loopback: moto's standalone server (``moto[server]``), standing in for MinIO.

moto does not check signatures or credentials: test our own authorization, never S3's, against it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from multipass_dev.local.process import (
    LOOPBACK,
    ManagedProcess,
    ServerStartError,
    find_binary,
    free_port,
    http_status,
)
from multipass_dev.local.server_process import PORT_TRIES, LocalServer

PACKAGE = "moto[server]"
STARTUP_TIMEOUT = 30.0
#: Path answered while the server runs, whatever it stores (moto's dashboard page). Not ``data.json``: that
#: serialises every stored object, grows with them, and answers 500 once an object went up in parts.
HEALTH_PATH = "/moto-api/"


class S3ServerProcess(LocalServer):
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
        tries = PORT_TRIES if port == 0 else 1
        return cls._start_with_retries(lambda: cls(port or free_port(), directory), timeout, tries)

    def _ready(self) -> bool:
        return self.answering()

    @property
    def endpoint(self) -> str:
        """``host:port``, the form ``MULTIPASS_S3_ENDPOINT`` takes."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def answering(self) -> bool:
        return http_status(f"{self.url}{HEALTH_PATH}", timeout=1.0) is not None

    def reset(self) -> None:
        """Forget every bucket and object (``POST /moto-api/reset``)."""
        status = http_status(f"{self.url}/moto-api/reset", method="POST", timeout=10.0)
        if status != 200:
            raise ServerStartError(f"moto reset answered {status}")

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Stop and start on the same port; moto keeps its data in memory, so it comes back empty."""
        super().restart(timeout)
