"""Prometheus metrics: the standard gRPC server metrics, shared buckets, the /metrics host of a service.

gRPC metric names follow go-grpc-prometheus (``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``) so existing Grafana dashboards work unchanged.
"""

from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Histogram

from multipass.grpc.wrapping import wrap_handler

#: Buckets for work measured in seconds to minutes (diffusion passes, whole jobs): up to 10 minutes.
LONG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
#: Buckets for request handling: 1 ms to a minute.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server, to the last response.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=RPC_BUCKETS,
)


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.unary_unary:
        return "unary"
    if handler.unary_stream:
        return "server_stream"
    if handler.stream_unary:
        return "client_stream"
    return "bidi_stream"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts started and handled RPCs and times them."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        _, _, path = handler_call_details.method.partition("/")
        service, _, method = path.partition("/")
        rpc_type = _rpc_type(handler)
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": rpc_type}
        started_at: list[float] = []

        def on_start() -> None:
            started_at.append(time.perf_counter())
            GRPC_STARTED.labels(**labels).inc()

        def on_finish(code: str) -> None:
            GRPC_HANDLED.labels(grpc_code=code, **labels).inc()
            if started_at:
                GRPC_HANDLING_SECONDS.labels(**labels).observe(time.perf_counter() - started_at.pop())

        return wrap_handler(handler, on_start=on_start, on_finish=on_finish)


def metrics_host_for(grpc_addr: str) -> str:
    """The /metrics host matching a gRPC ``host:port`` address (0.0.0.0 in pods, loopback locally)."""
    return grpc_addr.rpartition(":")[0].strip("[]") or "127.0.0.1"
