"""Probes every service's gRPC port must answer: health ``Watch`` (server streaming) and reflection v1."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def check_health_watch(address: str, service_name: str) -> None:
    """``Watch`` of the server and of ``service_name`` streams SERVING and ends as cancelled on cancel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service_name):
            call = stub.Watch(health_pb2.HealthCheckRequest(service=name))
            first = await asyncio.wait_for(call.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING, (name, first)
            call.cancel()
            assert await call.code() == grpc.StatusCode.CANCELLED


async def check_reflection_v1(address: str, service_name: str) -> None:
    """``grpc.reflection.v1`` lists ``service_name`` (its messages are the same on the wire as v1alpha's)."""
    async with grpc.aio.insecure_channel(address) as channel:
        info = channel.stream_stream(
            REFLECTION_V1,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = [a async for a in info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    names = {service.name for service in answers[0].list_services_response.service}
    assert {service_name, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names


async def check_streaming_probes(address: str, service_name: str, caplog) -> None:
    """Both probes, and nothing logged at WARNING or above by the server while they ran and closed."""
    with caplog.at_level("WARNING"):
        await check_health_watch(address, service_name)
        await check_reflection_v1(address, service_name)
        await asyncio.sleep(0.2)
    logged = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged == []
