"""The gateway's gRPC health (its readiness probe) is NOT_SERVING while NATS is down and SERVING again
once it reconnects; the process keeps running (its liveness probe checks the port only)."""

from __future__ import annotations

import asyncio
import time

from gateway_support import (  # noqa: F401 - fixtures
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_status(stack, wanted: int, timeout: float = 15.0) -> float:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    started = time.monotonic()
    while True:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service="multipass.v1.Jobs"), timeout=2)
        if answer.status == wanted:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"health stayed {answer.status}"
        await asyncio.sleep(0.1)


async def test_health_follows_the_nats_connection(stack, nats_server):
    await stack.start_gateway()
    await wait_for_status(stack, SERVING)
    nats_server.stop()
    await wait_for_status(stack, NOT_SERVING)
    nats_server.restart()
    await wait_for_status(stack, SERVING)
