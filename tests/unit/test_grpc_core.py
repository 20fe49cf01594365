"""The shared gRPC core: error mapping, undecodable requests, metrics, health (Watch too), reflection
(v1 and v1alpha), and streaming handlers of either shape through the interceptors."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from multipass import errors
from multipass.grpc import reflection_v1
from multipass.grpc.errors import field_violations, from_rpc_error
from multipass.grpc.server import Registration, start_grpc_server
from multipass.grpc.wrapping import wrap_handler
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


async def handled_reaches(code: str, expected: float) -> bool:
    """Whether the handled count of ``code`` reaches ``expected`` within a second: the server counts an
    error's status right after sending it, so a client may see the status first."""
    for _ in range(100):
        if handled(code) == expected:
            return True
        await asyncio.sleep(0.01)
    return handled(code) == expected


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
    assert await handled_reaches("INVALID_ARGUMENT", before + 1)
    rebuilt = from_rpc_error(error)
    assert isinstance(rebuilt, errors.InvalidInput)
    assert [v.field for v in rebuilt.violations] == ["params.steps", "<lora:x:1>"]


async def test_not_found_maps_to_not_found(channel):
    before = handled("NOT_FOUND")
    error = await call(channel, "missing")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "tune 42 does not exist" in error.details()
    assert field_violations(error) == []
    assert await handled_reaches("NOT_FOUND", before + 1)
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
    assert await handled_reaches("INTERNAL", before + 1)
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
    assert await handled_reaches("INVALID_ARGUMENT", before + 1)


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


def stream_handlers(shape: str) -> grpc.GenericRpcHandler:
    """``/test.Streams/Count`` (3 responses) and ``Echo`` (one per request), as ``shape`` handlers."""

    async def generator(request, context):
        for _ in range(3):
            yield prompt_pb2.ParseResponse()

    async def writer(request, context):
        for _ in range(3):
            await context.write(prompt_pb2.ParseResponse())

    async def echo_generator(request_iterator, context):
        async for _request in request_iterator:
            yield prompt_pb2.ParseResponse()

    async def echo_writer(request_iterator, context):
        async for _request in request_iterator:
            await context.write(prompt_pb2.ParseResponse())

    codec = dict(
        request_deserializer=prompt_pb2.ParseRequest.FromString,
        response_serializer=prompt_pb2.ParseResponse.SerializeToString,
    )
    count, echo = (generator, echo_generator) if shape == "generator" else (writer, echo_writer)
    return grpc.method_handlers_generic_handler(
        "test.Streams",
        {
            "Count": grpc.unary_stream_rpc_method_handler(count, **codec),
            "Echo": grpc.stream_stream_rpc_method_handler(echo, **codec),
        },
    )


def stream_handled(method: str, kind: str, code: str) -> float:
    labels = {"grpc_service": "test.Streams", "grpc_method": method, "grpc_type": kind, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


@pytest.mark.parametrize("shape", ["generator", "writer"])
async def test_streaming_handlers_of_both_shapes_stream_through_the_interceptors(server, channel, shape):
    server.server.add_generic_rpc_handlers((stream_handlers(shape),))
    codec = dict(
        request_serializer=prompt_pb2.ParseRequest.SerializeToString,
        response_deserializer=prompt_pb2.ParseResponse.FromString,
    )
    before = stream_handled("Count", "server_stream", "OK"), stream_handled("Echo", "bidi_stream", "OK")
    count = channel.unary_stream("/test.Streams/Count", **codec)
    assert len([r async for r in count(prompt_pb2.ParseRequest())]) == 3
    echo = channel.stream_stream("/test.Streams/Echo", **codec)
    assert len([r async for r in echo(iter([prompt_pb2.ParseRequest()] * 2))]) == 2
    after = stream_handled("Count", "server_stream", "OK"), stream_handled("Echo", "bidi_stream", "OK")
    assert after == (before[0] + 1, before[1] + 1)


def watch_handled(code: str) -> float:
    labels = {
        "grpc_service": "grpc.health.v1.Health",
        "grpc_method": "Watch",
        "grpc_type": "server_stream",
        "grpc_code": code,
    }
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_health_watch_streams_serving_then_the_change_and_ends_cleanly_on_cancel(
    server, channel, caplog
):
    stub = health_pb2_grpc.HealthStub(channel)
    cancelled_before, internal_before = watch_handled("CANCELLED"), watch_handled("INTERNAL")
    with caplog.at_level("WARNING"):
        call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await asyncio.wait_for(call.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        second = await asyncio.wait_for(call.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        # The server saw the stream end as cancelled by the client, not as an error of its own.
        for _ in range(50):
            if watch_handled("CANCELLED") == cancelled_before + 1:
                break
            await asyncio.sleep(0.02)
    assert watch_handled("CANCELLED") == cancelled_before + 1
    assert watch_handled("INTERNAL") == internal_before
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def v1_message(name: str):
    reflection_v1.register_v1_descriptor()
    pool = descriptor_pool.Default()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))


class ReflectionV1Stub:
    """A ``grpc.reflection.v1`` client built from the v1 descriptor alone."""

    def __init__(self, channel: grpc.aio.Channel):
        self.ServerReflectionInfo = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=v1_message("ServerReflectionResponse").FromString,
        )


async def test_reflection_is_served_as_v1_and_v1alpha(channel):
    async def ask(stub, request_type, **fields):
        responses = [r async for r in stub.ServerReflectionInfo(iter([request_type(**fields)]))]
        assert len(responses) == 1
        return responses[0]

    for stub, request_type in (
        (ReflectionV1Stub(channel), v1_message("ServerReflectionRequest")),
        (reflection_pb2_grpc.ServerReflectionStub(channel), reflection_pb2.ServerReflectionRequest),
    ):
        listed = await ask(stub, request_type, list_services="")
        names = {service.name for service in listed.list_services_response.service}
        assert {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        described = await ask(
            stub, request_type, file_containing_symbol="grpc.reflection.v1.ServerReflection"
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in described.file_descriptor_response.file_descriptor_proto
        ]
        assert [f.package for f in files] == ["grpc.reflection.v1"]
        assert files[0].service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


def cancel_reflection_streams(address: str, tries: int) -> None:
    """Open reflection streams with a sync client and cancel each while the server is still answering."""
    with grpc.insecure_channel(address) as chan:
        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        for requests in (2, 3, 10, 100) * (tries // 4):
            answers = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")] * requests)
            )
            next(answers)
            answers.cancel()


@pytest.mark.parametrize("how", ["cancel while answering", "close the channel", "half-close"])
async def test_closing_a_reflection_stream_logs_no_error(server, caplog, how):
    with caplog.at_level("WARNING"):
        if how == "cancel while answering":
            await asyncio.to_thread(cancel_reflection_streams, server.address, 40)
        else:
            chan = grpc.aio.insecure_channel(server.address)
            call = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            assert (await call.read()).list_services_response.service
            if how == "half-close":
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
            await chan.close()
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0.05)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == []


class FakeContext:
    def code(self):
        return None


async def test_a_response_stream_closed_by_grpc_counts_as_cancelled_and_is_not_an_error():
    """grpc closes a handler's generator at its ``yield`` when the client went away mid-answer."""
    errors_seen: list[BaseException] = []
    finished: list[str] = []

    async def on_error(error, context):
        errors_seen.append(error)

    async def responses(request, context):
        for _ in range(3):
            yield prompt_pb2.ParseResponse()

    inner = grpc.unary_stream_rpc_method_handler(responses)
    wrapped = wrap_handler(inner, on_error=on_error, on_finish=finished.append).unary_stream
    stream = wrapped(prompt_pb2.ParseRequest(), FakeContext())
    await stream.__anext__()
    await stream.aclose()
    assert errors_seen == [] and finished == ["CANCELLED"]
