"""Wiring the prompt parser: the gRPC server (health, reflection, interceptors) and /metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from multipass.grpc.internal_auth import InternalTokenInterceptor
from multipass.grpc.server import Registration, RunningServer, start_grpc_server
from multipass.metrics_endpoint import MetricsEndpoint
from multipass.v1 import prompt_pb2_grpc
from multipass_prompt_parser.servicer import PromptParserServicer
from multipass_prompt_parser.settings import ParserSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "multipass.v1.PromptParser"


@dataclass
class ParserHandle:
    """A running prompt parser."""

    grpc: RunningServer
    metrics_port: int
    _metrics: MetricsEndpoint

    @property
    def address(self) -> str:
        return self.grpc.address

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float = 5.0) -> None:
        """Answer NOT_SERVING, finish in-flight calls within ``grace`` seconds, close /metrics."""
        await self.grpc.stop(grace)
        self._metrics.close()
        log.info("prompt parser stopped")

    async def wait(self) -> None:
        await self.grpc.server.wait_for_termination()


async def serve(settings: ParserSettings) -> ParserHandle:
    """Start the prompt parser on ``settings.grpc_addr`` (port 0 picks one) and /metrics."""
    metrics = MetricsEndpoint.start(settings.metrics_port, settings.metrics_host)
    interceptors = [InternalTokenInterceptor(settings.internal_token)] if settings.internal_token else []
    try:
        running = await start_grpc_server(
            settings.grpc_addr,
            [
                Registration(
                    prompt_pb2_grpc.add_PromptParserServicer_to_server,
                    PromptParserServicer(settings.limits),
                    SERVICE_NAME,
                )
            ],
            extra_interceptors=interceptors,
        )
    except BaseException:
        metrics.close()
        raise
    metrics_port = metrics.port
    log.info("prompt parser serving", extra={"port": running.port, "metrics_port": metrics_port})
    return ParserHandle(grpc=running, metrics_port=metrics_port, _metrics=metrics)
