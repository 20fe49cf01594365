"""API-key authentication through a running gateway with its per-replica cache: a key revoked on another
replica stops working within ``auth_cache_seconds``; with 0 it stops at once."""

from __future__ import annotations

import asyncio
import time

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)

from multipass import names
from multipass.v1 import jobs_pb2
from multipass_gateway.infra.tenant_store import TenantStore

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
