"""A ``grpc.aio`` server with our interceptors, health checking, reflection and graceful shutdown.

Reflection is served as both ``grpc.reflection.v1`` (what current grpcurl, Postman and gRPC UI ask first)
and ``grpc.reflection.v1alpha`` (older tools).

Keepalive: clients may ping every :data:`MIN_CLIENT_PING_INTERVAL_MS` or less often, on a call that has
sent nothing for a while (a watched job waiting its turn) and on an idle connection. gRPC's default
answers a client that pings more often than every five minutes without data with GOAWAY
``too_many_pings``, ending its streams; grpc-js, Go and Java clients keep pinging at their keepalive time
whether data flows or not. The server pings each connection every :data:`SERVER_PING_INTERVAL_MS`, so
proxies and load balancers in between see traffic on a quiet stream, and a client that stopped answering
is dropped after :data:`SERVER_PING_TIMEOUT_MS`, ending its calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from multipass.grpc import reflection_v1
from multipass.grpc.errors import ErrorInterceptor
from multipass.grpc.reflection_symbols import ReflectionServicer
from multipass.metrics import MetricsInterceptor

log = logging.getLogger(__name__)

#: Generous message limits for the few rpcs that stream uploads; images never travel inside messages.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: Shortest interval between a client's keepalive pings the server accepts (more often: GOAWAY).
MIN_CLIENT_PING_INTERVAL_MS = 5_000
#: How often the server pings a connection, and how long it waits for the answer.
SERVER_PING_INTERVAL_MS = 60_000
SERVER_PING_TIMEOUT_MS = 20_000


@dataclass
class Registration:
    """One servicer to serve: the generated ``add_XServicer_to_server`` function and its full name."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object
    service_name: str


@dataclass
class RunningServer:
    """A started server. Health answers SERVING while the service says it serves (:meth:`set_serving`)
    and no dependency it needs is down (:meth:`set_dependency`, from :mod:`multipass.grpc.dependencies`)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)
    serving: bool = False
    dependencies_down: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool = True) -> None:
        self.serving = serving
        await self._publish()

    async def set_dependency(self, name: str, up: bool) -> None:
        """Note whether dependency ``name`` (``nats``, ``s3``) is reachable; any one down is NOT_SERVING."""
        if up:
            self.dependencies_down.discard(name)
        else:
            self.dependencies_down.add(name)
        await self._publish()

    async def _publish(self) -> None:
        serving = self.serving and not self.dependencies_down
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Mark NOT_SERVING, then stop accepting calls and let in-flight ones finish within ``grace``."""
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_grpc_server(
    address: str,
    registrations: Sequence[Registration],
    *,
    serving: bool = True,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Bind ``address`` (``host:0`` picks a port), register servicers, health and reflection, start.

    With ``serving=False`` health answers NOT_SERVING until :meth:`RunningServer.set_serving` is called
    (a worker that must load and warm up its model first).
    """
    interceptors = [MetricsInterceptor(), *extra_interceptors, ErrorInterceptor()]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.keepalive_time_ms", SERVER_PING_INTERVAL_MS),
            ("grpc.keepalive_timeout_ms", SERVER_PING_TIMEOUT_MS),
            ("grpc.http2.max_pings_without_data", 0),  # its own pings go on while a stream is quiet
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.service_name for r in registrations]
    for registration in registrations:
        registration.add_to_server(registration.servicer, server)
    reflected = [*names, health.SERVICE_NAME, reflection_v1.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection_servicer = ReflectionServicer(reflected)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, server)
    reflection_v1.add_reflection_v1_to_server(reflection_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, service_names=names)
    await running.set_serving(serving)
    log.info("grpc server started", extra={"address": address, "port": port, "services": names})
    return running
