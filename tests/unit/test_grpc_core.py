"""The shared gRPC core: error mapping, undecodable requests, metrics, health and reflection."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from multipass import errors
from multipass.grpc.errors import field_violations, from_rpc_error
from multipass.grpc.server import Registration, start_grpc_server
from multipass.v1 import prompt_pb2, prompt_pb2_grpc

SERVICE = "multipass.v1.PromptParser"
PARSE = f"/{SERVICE}/Parse"


class FakeParser(prompt_pb2_grpc.PromptParserServicer):
    """Behaves according to the request text, so each test picks the failure it needs."""

    async def Parse(self, request, context):
        if request.text == "invalid":
            raise errors.InvalidInput.of(
                [
                    errors.Violation("params.steps", "got '0'; expected 1..150"),
                    errors.Violation("<lora:x:1>", "unknown tune 'x'"),
                ]
            )
        if request.text == "missing":
            raise errors.NotFound("tune 42 does not exist")
        if request.text == "busy":
            raise errors.ResourceExhausted("queue full", retry_after_seconds=2.5)
        if request.text == "boom":
            raise RuntimeError("secret internals /etc/passwd")
        return prompt_pb2.ParseResponse()


@pytest.fixture
async def server():
    running = await start_grpc_server(
        "127.0.0.1:0",
        [Registration(prompt_pb2_grpc.add_PromptParserServicer_to_server, FakeParser(), SERVICE)],
    )
    try:
        yield running
    finally:
        await running.stop(grace=0.5)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(server.address) as chan:
        yield chan


def handled(code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": "Parse", "grpc_type": "unary", "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def started() -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": "Parse", "grpc_type": "unary"}
    return REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0


def handling_count() -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": "Parse", "grpc_type": "unary"}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


async def call(channel, text: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompt_pb2_grpc.PromptParserStub(channel).Parse(prompt_pb2.ParseRequest(text=text))
    return caught.value


async def test_ok_answers_and_counts(channel):
    before_ok, before_started, before_timed = handled("OK"), started(), handling_count()
    response = await prompt_pb2_grpc.PromptParserStub(channel).Parse(prompt_pb2.ParseRequest(text="a cat"))
    assert isinstance(response, prompt_pb2.ParseResponse)
    assert handled("OK") == before_ok + 1
    assert started() == before_started + 1
    assert handling_count() == before_timed + 1


async def test_invalid_input_is_invalid_argument_with_field_violations(channel):
    before = handled("INVALID_ARGUMENT")
    error = await call(channel, "invalid")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [
        ("params.steps", "got '0'; expected 1..150"),
        ("<lora:x:1>", "unknown tune 'x'"),
    ]
    assert handled("INVALID_ARGUMENT") == before + 1
    rebuilt = from_rpc_error(error)
    assert isinstance(rebuilt, errors.InvalidInput)
    assert [v.field for v in rebuilt.violations] == ["params.steps", "<lora:x:1>"]


async def test_not_found_maps_to_not_found(channel):
    before = handled("NOT_FOUND")
    error = await call(channel, "missing")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "tune 42 does not exist" in error.details()
    assert field_violations(error) == []
    assert handled("NOT_FOUND") == before + 1
    assert isinstance(from_rpc_error(error), errors.NotFound)


async def test_resource_exhausted_carries_retry_info(channel):
    error = await call(channel, "busy")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    retry = error_details_pb2.RetryInfo()
    infos[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


async def test_unexpected_exception_is_internal_without_leaking(channel, caplog):
    before = handled("INTERNAL")
    with caplog.at_level("ERROR", logger="multipass.grpc.errors"):
        error = await call(channel, "boom")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "passwd" not in error.details()
    assert handled("INTERNAL") == before + 1
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])


async def test_undecodable_request_bytes_are_invalid_argument(channel):
    before = handled("INVALID_ARGUMENT")
    raw = channel.unary_unary(PARSE, request_serializer=None, response_deserializer=None)
    # Field 1 (text) claims 5 bytes but only 2 follow: not a ParseRequest.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\x0a\x05ab")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(caught.value)] == ["request"]
    assert handled("INVALID_ARGUMENT") == before + 1


async def test_health_follows_serving_state(server, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    await server.set_serving(False)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="multipass.v1.Nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_server_started_not_serving_until_ready():
    running = await start_grpc_server(
        "127.0.0.1:0",
        [Registration(prompt_pb2_grpc.add_PromptParserServicer_to_server, FakeParser(), SERVICE)],
        serving=False,
    )
    try:
        async with grpc.aio.insecure_channel(running.address) as chan:
            stub = health_pb2_grpc.HealthStub(chan)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await running.set_serving(True)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(grace=0.1)


async def test_reflection_lists_services_and_describes_them(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        assert len(responses) == 1
        return responses[0]

    listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

    described = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
    assert described.file_descriptor_response.file_descriptor_proto
