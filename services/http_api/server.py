"""Serving the application with uvicorn in this process, and /metrics beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import uvicorn

from multipass.metrics_endpoint import MetricsEndpoint
from multipass.store import ObjectStore
from multipass_http_api.app import create_app
from multipass_http_api.gateway import GatewayClient
from multipass_http_api.settings import HttpApiSettings

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's entry point owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass
class HttpApiHandle:
    """A running HTTP service."""

    server: uvicorn.Server
    task: asyncio.Task
    gateway: GatewayClient
    app: object
    host: str
    port: int
    metrics_port: int
    _metrics: MetricsEndpoint

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, end open event streams, let answers in flight finish within ``grace``."""
        self.app.state.stopping.set()
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=grace + 1)
        except TimeoutError:
            self.server.force_exit = True
            await self.task
        await self.gateway.close()
        self._metrics.close()
        log.info("http api stopped")


def _listen(settings: HttpApiSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, reuse_port=False)
    sock.set_inheritable(True)
    return sock


async def serve(settings: HttpApiSettings) -> HttpApiHandle:
    """Start the HTTP service on ``settings.http_addr`` (port 0 picks one) and /metrics."""
    metrics = MetricsEndpoint.start(settings.metrics_port, settings.metrics_host)
    gateway = GatewayClient(settings.gateway_target, timeout_seconds=settings.gateway_timeout_seconds)
    try:
        sock = _listen(settings)
    except BaseException:
        metrics.close()
        await gateway.close()
        raise
    objects = ObjectStore.from_settings(settings.s3)
    app = create_app(settings, gateway, objects)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-api")
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    handle = HttpApiHandle(
        server=server,
        task=task,
        gateway=gateway,
        app=app,
        host=settings.host,
        port=port,
        metrics_port=metrics.port,
        _metrics=metrics,
    )
    log.info("http api serving", extra={"url": handle.url, "metrics_port": handle.metrics_port})
    return handle
