"""gRPC health follows the dependencies: NOT_SERVING while NATS is unreachable, SERVING once it is back,
and never SERVING again on a server that stopped serving (a draining worker)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from multipass.grpc.dependencies import check_once, watch_dependencies
from multipass.grpc.server import start_grpc_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Link:
    """A dependency whose reachability the test sets."""

    def __init__(self):
        self.up = True

    def __call__(self) -> bool:
        return self.up


@pytest.fixture
async def server():
    running = await start_grpc_server("127.0.0.1:0", [])
    try:
        yield running
    finally:
        await running.stop(grace=0.1)


async def status(server) -> int:
    async with grpc.aio.insecure_channel(server.address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return answer.status


async def test_health_is_not_serving_while_a_dependency_is_down(server, caplog):
    caplog.set_level(logging.INFO, logger="multipass.grpc.dependencies")
    nats = Link()
    await check_once(server, {"nats": nats}, timeout=1.0)
    assert await status(server) == SERVING
    nats.up = False
    await check_once(server, {"nats": nats}, timeout=1.0)
    assert await status(server) == NOT_SERVING
    assert "dependency unreachable; not serving" in caplog.text
    nats.up = True
    await check_once(server, {"nats": nats}, timeout=1.0)
    assert await status(server) == SERVING
    assert "dependency reachable again; serving" in caplog.text


async def test_a_failing_or_hanging_check_counts_as_down(server):
    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    def raises() -> bool:
        raise OSError("connection refused")

    await check_once(server, {"s3": hangs}, timeout=0.05)
    assert await status(server) == NOT_SERVING
    await check_once(server, {"s3": lambda: True, "nats": raises}, timeout=0.05)
    assert await status(server) == NOT_SERVING
    await check_once(server, {"nats": lambda: True}, timeout=0.05)
    assert await status(server) == SERVING


async def test_a_dependency_coming_back_does_not_undo_a_drain(server):
    nats = Link()
    await server.set_serving(False)
    await check_once(server, {"nats": nats}, timeout=1.0)
    assert await status(server) == NOT_SERVING


async def test_the_watch_checks_until_stopped(server):
    nats, stop = Link(), asyncio.Event()
    watch = asyncio.create_task(watch_dependencies(server, {"nats": nats}, stop, interval=0.02))
    nats.up = False
    for _ in range(100):
        if await status(server) == NOT_SERVING:
            break
        await asyncio.sleep(0.02)
    assert await status(server) == NOT_SERVING
    stop.set()
    await asyncio.wait_for(watch, 1.0)
