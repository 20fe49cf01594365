"""API-key authentication through a running gateway with its per-replica cache: a key revoked on another
replica stops working within ``auth_cache_seconds``; with 0 it stops at once. Revoking a key ends its open
WatchJob streams with UNAUTHENTICATED on every replica: through the replicas' notes, or, when a note is
lost, at the replica's next recheck of its open streams' keys."""

from __future__ import annotations

import asyncio
import time

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)

from multipass import names
from multipass.v1 import admin_pb2, jobs_pb2, jobs_pb2_grpc
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.main import serve as serve_gateway

LIST = jobs_pb2.ListJobsRequest()


async def code_of(stack, key: str) -> grpc.StatusCode:
    try:
        await stack.jobs.ListJobs(LIST, metadata=bearer(key))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def other_replica(stack) -> TenantStore:
    """The tenant store another gateway replica would use (same bucket, same pepper)."""
    return TenantStore(await stack.bus.kv(names.KV_TENANTS), stack.settings().api_key_pepper)


async def test_a_key_revoked_on_another_replica_fails_once_the_cache_ttl_passed(stack):
    ttl = 3.0
    await stack.start_gateway(auth_cache_seconds=ttl)
    tenant = await stack.tenant("acme")
    assert await code_of(stack, tenant.api_key) == grpc.StatusCode.OK
    read_at = time.monotonic()
    await (await other_replica(stack)).revoke(tenant.key_id)
    if time.monotonic() - read_at < ttl * 0.5:
        # Still within the TTL of this replica's read: the cached answer is used (no KV read).
        assert await code_of(stack, tenant.api_key) == grpc.StatusCode.OK
    await asyncio.sleep(max(0.0, ttl - (time.monotonic() - read_at)) + 0.1)
    assert await code_of(stack, tenant.api_key) == grpc.StatusCode.UNAUTHENTICATED


async def test_with_the_cache_off_revocation_on_another_replica_is_immediate(stack):
    await stack.start_gateway(auth_cache_seconds=0.0)
    tenant = await stack.tenant("acme")
    assert await code_of(stack, tenant.api_key) == grpc.StatusCode.OK
    await (await other_replica(stack)).revoke(tenant.key_id)
    assert await code_of(stack, tenant.api_key) == grpc.StatusCode.UNAUTHENTICATED


async def open_watch(channel: grpc.aio.Channel, key: str, job_id: str) -> grpc.aio.UnaryStreamCall:
    """A WatchJob stream that delivered its first event (so it is open and registered)."""
    call = jobs_pb2_grpc.JobsStub(channel).WatchJob(
        jobs_pb2.WatchJobRequest(job_id=job_id), metadata=bearer(key)
    )
    first = await asyncio.wait_for(call.read(), 10)
    assert first is not grpc.aio.EOF and first.sequence == 1
    return call


async def end_of(call: grpc.aio.UnaryStreamCall, within: float) -> tuple[grpc.StatusCode, float]:
    """How the stream ended (its status code; OK for a clean end) and after how many seconds."""
    began = time.monotonic()

    async def drain() -> grpc.StatusCode:
        while True:
            try:
                event = await call.read()
            except grpc.aio.AioRpcError as error:
                return error.code()
            if event is grpc.aio.EOF:
                return grpc.StatusCode.OK

    try:
        code = await asyncio.wait_for(drain(), within)
    except TimeoutError:
        call.cancel()
        return grpc.StatusCode.DEADLINE_EXCEEDED, time.monotonic() - began
    return code, time.monotonic() - began


async def running_job(stack, key: str) -> str:
    """A job that stays running: the fake worker holds every pass until the test ends."""
    stack.worker.gate.clear()
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat\nsteps=2\nw=256\nh=256"), metadata=bearer(key)
    )
    return submitted.job_id


async def test_revoking_a_key_ends_its_watch_streams_on_every_replica(stack):
    # Long cache and recheck: only the replicas' notes can end the other replica's stream this fast.
    slow = dict(auth_cache_seconds=30.0, stream_auth_recheck_seconds=30.0)
    await stack.start_gateway(**slow)
    second = await serve_gateway(stack.settings(**slow))
    try:
        async with grpc.aio.insecure_channel(second.address) as second_channel:
            tenant = await stack.tenant("acme")
            admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
            other = await stack.admin.CreateKey(
                admin_pb2.CreateKeyRequest(tenant=tenant.tenant), metadata=admin
            )
            job_id = await running_job(stack, tenant.api_key)
            here = await open_watch(stack.channel, tenant.api_key, job_id)
            there = await open_watch(second_channel, tenant.api_key, job_id)
            kept = await open_watch(second_channel, other.api_key, job_id)
            await stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=tenant.key_id), metadata=admin)
            (here_code, _), (there_code, there_after) = await asyncio.gather(
                end_of(here, 5.0), end_of(there, 5.0)
            )
            assert here_code == grpc.StatusCode.UNAUTHENTICATED
            assert there_code == grpc.StatusCode.UNAUTHENTICATED and there_after < 3.0
            # The other replica also stopped trusting its cached read of the key at once.
            denied = jobs_pb2_grpc.JobsStub(second_channel).ListJobs(LIST, metadata=bearer(tenant.api_key))
            try:
                await denied
                raise AssertionError("a revoked key still lists jobs on the other replica")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            # The tenant's other key keeps its stream.
            assert (await end_of(kept, 0.5))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await second.stop(grace=1.0)


async def test_a_revocation_whose_note_was_lost_ends_streams_at_the_next_recheck(stack):
    await stack.start_gateway(auth_cache_seconds=30.0, stream_auth_recheck_seconds=0.5)
    tenant = await stack.tenant("acme")
    job_id = await running_job(stack, tenant.api_key)
    call = await open_watch(stack.channel, tenant.api_key, job_id)
    # Revoked by a replica that tells nobody: only the recheck of the stream's key can notice.
    await (await other_replica(stack)).revoke(tenant.key_id)
    code, after = await end_of(call, 5.0)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert after < 2.0
