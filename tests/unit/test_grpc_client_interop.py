"""What clients in other languages and generic gRPC tools expect of every Multipass server.

* Reflection answers ``file_containing_symbol`` for every fully-qualified symbol the spec names, methods
  included (``grpcurl describe multipass.v1.PromptParser.Parse`` asks for the method's name).
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
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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


async def reflect(address: str, symbol: str) -> reflection_pb2.ServerReflectionResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize(
    "symbol",
    [
        SERVICE,
        f"{SERVICE}.Parse",
        "multipass.v1.ParseRequest",
        "multipass.v1.ParseRequest.text",
        "grpc.health.v1.Health.Check",
    ],
)
async def test_reflection_finds_the_file_of_every_kind_of_symbol(server, symbol):
    answer = await reflect(server.address, symbol)
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer.error_response
    assert answer.file_descriptor_response.file_descriptor_proto


async def test_reflection_still_answers_not_found_for_unknown_symbols(server):
    for symbol in (f"{SERVICE}.Nope", "multipass.v1.Nope.Parse", "nope"):
        answer = await reflect(server.address, symbol)
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


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
