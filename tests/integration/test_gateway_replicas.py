"""Two gateway replicas over one NATS and S3, a client's calls alternating between them: what one replica
does, the other answers for at once or within the documented bound, and nothing outlives a tenant's
removal on another replica."""

from __future__ import annotations

import asyncio
import io
import ipaddress

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    ImageServer,
    bearer,
    capabilities_fixture,
    rpc_error,
    segmentation_models_fixture,
    stack_fixture,
)
from PIL import Image

from multipass import names
from multipass.v1 import admin_pb2, jobs_pb2, jobs_pb2_grpc
from multipass_gateway.main import serve as serve_gateway
from multipass_gateway.settings import FetchAllowList

pytestmark = pytest.mark.timeout(60)
ADMIN = [("x-multipass-admin-token", ADMIN_TOKEN)]


async def test_a_submit_under_way_on_one_replica_leaves_nothing_of_a_tenant_removed_on_another(stack):
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 20, 30)).save(buffer, format="PNG")
    image = ImageServer(buffer.getvalue(), held=True)
    options = dict(
        auth_cache_seconds=0.5, fetch_allow=FetchAllowList(networks=(ipaddress.ip_network("127.0.0.1/32"),))
    )
    await stack.start_gateway(**options)
    second = await serve_gateway(stack.settings(**options))
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            doomed = await stack.tenant("doomed")
            request = jobs_pb2.SubmitJobRequest(
                prompt="a cat", params={"steps": "1", "w": "256", "h": "256", "input_image_url": image.url}
            )
            # Replica B accepted the call (the key was live) and fetches the input image meanwhile.
            submit = asyncio.ensure_future(
                jobs_pb2_grpc.JobsStub(channel).SubmitJob(request, metadata=bearer(doomed.api_key))
            )
            await asyncio.sleep(0.3)
            removed = await stack.admin.DeleteTenant(
                admin_pb2.DeleteTenantRequest(tenant=doomed.tenant), metadata=ADMIN
            )
            assert removed.keys_revoked == 1
            image.release.set()  # the submit goes on, long after the removal waited out the auth cache
            error = await rpc_error(submit)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            await asyncio.sleep(0.5)
            records = await (await stack.bus.kv(names.KV_JOBS)).keys(f"{doomed.tenant}.*")
            assert records == [], "a job of the removed tenant outlived its removal"
            assert await stack.store.list_keys(names.BUCKET_JOBS, f"jobs/{doomed.tenant}/") == []
    finally:
        image.close()
        await second.stop(grace=1.0)


async def test_limits_set_on_one_replica_hold_on_the_other_at_once(stack):
    # A long cache: only the replicas' note can make the other replica read the new limits this soon.
    await stack.start_gateway(auth_cache_seconds=30.0)
    second = await serve_gateway(stack.settings(auth_cache_seconds=30.0))
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            tenant = await stack.tenant("acme")
            there = jobs_pb2_grpc.JobsStub(channel)
            stack.worker.gate.clear()  # the job stays pending
            one = jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1", "w": "256", "h": "256"})
            await there.SubmitJob(one, metadata=bearer(tenant.api_key))  # B has read the tenant's limits
            await stack.admin.SetTenantLimits(
                admin_pb2.SetTenantLimitsRequest(
                    tenant=tenant.tenant, limits=admin_pb2.TenantLimits(max_pending_passes=1)
                ),
                metadata=ADMIN,
            )
            await asyncio.sleep(0.2)  # the note travels
            error = await rpc_error(there.SubmitJob(one, metadata=bearer(tenant.api_key)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            stack.worker.gate.set()
    finally:
        await second.stop(grace=1.0)
