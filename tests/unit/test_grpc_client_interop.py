"""What clients in other languages and generic gRPC tools expect of every Multipass server.

* Client keepalive pings are tolerated down to :data:`server.MIN_CLIENT_PING_INTERVAL_MS`, on a stream that
  sends nothing for a while (a watched job waiting its turn): gRPC's default
  policy answers a client that pings more often than every five minutes without data with GOAWAY
  ``too_many_pings``, which ends the stream (grpc-js reports RESOURCE_EXHAUSTED, "Bandwidth exhausted").
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from multipass.grpc import server as grpc_server
from multipass.grpc.server import Registration, start_grpc_server
from multipass.v1 import prompt_pb2, prompt_pb2_grpc

SERVICE = "multipass.v1.PromptParser"


class Parser(prompt_pb2_grpc.PromptParserServicer):
    async def Parse(self, request, context):
        return prompt_pb2.ParseResponse()


@pytest.fixture
async def server():
    running = await start_grpc_server(
        "127.0.0.1:0", [Registration(prompt_pb2_grpc.add_PromptParserServicer_to_server, Parser(), SERVICE)]
    )
    try:
        yield running
    finally:
        await running.stop(grace=0.5)


async def test_a_quiet_stream_survives_client_keepalive_pings_at_the_documented_interval(server):
    interval = grpc_server.MIN_CLIENT_PING_INTERVAL_MS
    # As grpc-js, Go and Java clients do: a ping every interval, data or not (gRPC core's own clients
    # stop after two pings without data unless told otherwise).
    options = [
        ("grpc.keepalive_time_ms", interval),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await asyncio.wait_for(call.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        # Nothing is sent on the stream now; the client pings every interval. The default policy
        # would answer the fourth ping with GOAWAY and end the stream.
        read = asyncio.ensure_future(call.read())
        done, _ = await asyncio.wait({read}, timeout=6 * interval / 1000)
        assert not done, f"the stream ended: {await call.code()} {await call.details()}"
        # ... and it still carries what the server sends.
        await server.set_serving(False)
        second = await asyncio.wait_for(read, 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()
