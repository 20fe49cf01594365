"""What the gateway keeps and for how long: uploads (owner-only deletion, expiry, a per-tenant bound) and
finished jobs past the operator's retention."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    bearer,
    capabilities_fixture,
    register_tune,
    rpc_error,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from prometheus_client import REGISTRY

from multipass.grpc.errors import field_violations, reason_of
from multipass.names import BUCKET_JOBS, BUCKET_TUNES, KV_TENANTS
from multipass.v1 import admin_pb2, common_pb2, jobs_pb2
from multipass_gateway.app.uploads import Uploads
from multipass_gateway.settings import Limits


async def test_uploads_expire_and_are_deleted_by_their_owner_only(stack):
    await stack.start_gateway(upload_ttl_seconds=3600.0, upload_sweep_seconds=3600.0)
    owner, other = await stack.tenant("owner"), await stack.tenant("other")
    mine, theirs = bearer(owner.api_key), bearer(other.api_key)
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 120, 90)).save(buffer, format="PNG")

    async def upload() -> jobs_pb2.UploadImageResponse:
        async def parts():
            yield jobs_pb2.UploadImageRequest(filename="face.png")
            yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

        return await stack.jobs.UploadImage(parts(), metadata=mine)

    before = time.time()
    first, second, third = await upload(), await upload(), await upload()
    assert before + 3600 - 5 <= first.expires_at.seconds <= time.time() + 3600 + 1
    key = f"uploads/{owner.tenant}/{first.image_id}.png"

    # Another tenant cannot delete it, nor learn that it exists: the same NOT_FOUND as for no upload.
    for image_id in (first.image_id, "0" * 24):
        error = await rpc_error(
            stack.jobs.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=image_id), metadata=theirs)
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND and reason_of(error).reason == "UNKNOWN_IMAGE"
        assert dict(field_violations(error)) == {"image_id": f"no uploaded image '{image_id}'"}
    assert await stack.store.exists(BUCKET_JOBS, key)
    # Malformed ids are invalid arguments naming the field; no credentials is UNAUTHENTICATED.
    for image_id, expected in (
        ("", "is required"),
        ("../../tunes/x", "expected an image_id returned by UploadImage"),
    ):
        error = await rpc_error(
            stack.jobs.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=image_id), metadata=mine)
        )
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and expected in dict(field_violations(error))["image_id"]
        )
    error = await rpc_error(stack.jobs.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=first.image_id)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # A job that used the upload keeps its own copy of it.
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="BREAK BREAK ohwx woman", params={"steps": "2"}, input_image_id=first.image_id
        ),
        metadata=mine,
    )
    await stack.jobs.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=first.image_id), metadata=mine)
    assert not await stack.store.exists(BUCKET_JOBS, key)
    assert (await wait_for_job(stack, submitted.job_id, owner.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    error = await rpc_error(
        stack.jobs.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=first.image_id), metadata=mine)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", input_image_id=first.image_id, params={"steps": "1"}),
            metadata=mine,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "input_image_id" in dict(field_violations(error))

    # Expiry: nothing is due within the TTL; past it every tenant's uploads go, and only uploads.
    uploads = Uploads(stack.store, ttl_seconds=3600.0, sweep_seconds=3600.0)
    assert await uploads.expire_once() == 0
    job_keys = await stack.store.list_keys(BUCKET_JOBS, f"jobs/{owner.tenant}/")
    later = datetime.now(UTC) + timedelta(seconds=3601)
    assert await uploads.expire_once(now=later) >= 2
    for response in (second, third):
        assert not await stack.store.exists(BUCKET_JOBS, f"uploads/{owner.tenant}/{response.image_id}.png")
    assert await stack.store.list_keys(BUCKET_JOBS, f"jobs/{owner.tenant}/") == job_keys
    # A TTL of 0 keeps uploads: no expires_at, nothing swept.
    assert Uploads(stack.store, ttl_seconds=0, sweep_seconds=1).expires_at(datetime.now(UTC)) is None
    assert await Uploads(stack.store, ttl_seconds=0, sweep_seconds=1).expire_once(now=later) == 0


async def test_a_tenant_holds_a_bounded_number_of_uploads(stack):
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, tenant_max_uploads=3))
    owner, other = await stack.tenant("owner"), await stack.tenant("other")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="PNG")

    async def upload(key: str) -> jobs_pb2.UploadImageResponse:
        async def parts():
            yield jobs_pb2.UploadImageRequest(filename="x.png")
            yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

        return await stack.jobs.UploadImage(parts(), metadata=bearer(key))

    held = [await upload(owner.api_key) for _ in range(3)]
    error = await rpc_error(upload(owner.api_key))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error).reason == "QUOTA_EXCEEDED" and dict(reason_of(error).metadata) == {
        "scope": "uploads",
        "limit": "3",
    }
    assert "DeleteUpload" in error.details()
    retry = next(
        detail
        for detail in rpc_status.from_call(error).details
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    )
    info = error_details_pb2.RetryInfo()
    retry.Unpack(info)
    assert 3500 <= info.retry_delay.seconds <= 86400  # the oldest upload's expiry, a day after it came
    # Other tenants are not affected; deleting one makes room.
    await upload(other.api_key)
    await stack.jobs.DeleteUpload(
        jobs_pb2.DeleteUploadRequest(image_id=held[0].image_id), metadata=bearer(owner.api_key)
    )
    assert (await upload(owner.api_key)).image_id


async def test_an_uploaded_mask_painted_on_a_transparent_canvas_repaints_only_what_was_painted(stack):
    """A mask drawn white on a transparent canvas (what a web canvas or an editor exports) repaints the
    painted square only; the same upload as an input image reads transparent as white."""
    await stack.start_gateway()
    owner = await stack.tenant("owner")
    canvas = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    canvas.paste((255, 255, 255, 255), (128, 128, 256, 256))

    async def upload(image: Image.Image) -> jobs_pb2.UploadImageResponse:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")

        async def parts():
            yield jobs_pb2.UploadImageRequest(filename="mask.png")
            yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

        return await stack.jobs.UploadImage(parts(), metadata=bearer(owner.api_key))

    photo, mask = await upload(Image.new("RGB", (512, 512), (90, 120, 60))), await upload(canvas)
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a cat",
            params={"steps": "1"},
            input_image_id=photo.image_id,
            mask_image_id=mask.image_id,
        ),
        metadata=bearer(owner.api_key),
    )
    stored = await stack.store.get_image(
        common_pb2.ImageRef(
            bucket=BUCKET_JOBS, key=f"jobs/{owner.tenant}/{submitted.job_id}/inputs/mask.png"
        ),
        mode="L",
    )
    # The job's size may differ from the upload's; the painted square is the mask, the rest keeps.
    scale = stored.width / 512
    assert stored.getbbox() == tuple(round(v * scale) for v in (128, 128, 256, 256))
    assert stored.getpixel((round(192 * scale), round(192 * scale))) == 255
    as_input = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1"}, input_image_id=mask.image_id),
        metadata=bearer(owner.api_key),
    )
    stored = await stack.store.get_image(
        common_pb2.ImageRef(bucket=BUCKET_JOBS, key=f"jobs/{owner.tenant}/{as_input.job_id}/inputs/input.png")
    )
    assert stored.getpixel((10, 10)) == (255, 255, 255)


async def test_finished_jobs_past_the_retention_are_deleted_whole_and_running_ones_kept(stack):
    await stack.start_gateway(job_retention_seconds=1.0, retention_sweep_seconds=0.2)
    tenant = await stack.tenant()
    mine = bearer(tenant.api_key)
    fast = {"steps": "1", "w": "256", "h": "256"}
    done = await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt="a cat", params=fast), metadata=mine)
    assert (await wait_for_job(stack, done.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    prefix = f"jobs/{tenant.tenant}/{done.job_id}/"
    assert await stack.store.list_keys(BUCKET_JOBS, prefix)
    stack.worker.gate.clear()  # the next job cannot finish
    held = await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt="a dog", params=fast), metadata=mine)
    await asyncio.sleep(2.2)
    error = await rpc_error(stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=done.job_id), metadata=mine))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert not await stack.store.list_keys(BUCKET_JOBS, prefix)
    # Older than the retention, but not finished: kept, and it runs to its end once the worker answers.
    running = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=held.job_id), metadata=mine)
    assert running.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
    stack.worker.gate.set()
    assert (await wait_for_job(stack, held.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED


async def test_an_operator_removes_a_tenant_with_everything_it_owns_and_nothing_of_another(stack):
    await stack.start_gateway(auth_cache_seconds=0.3)
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    gone, kept = await stack.tenant("leaving"), await stack.tenant("staying")
    second_key = await stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=gone.tenant), metadata=admin)
    params = {"steps": "2", "w": "256", "h": "256"}
    jobs = {}
    for tenant in (gone, kept):
        submitted = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", params=params), metadata=bearer(tenant.api_key)
        )
        jobs[tenant.tenant] = (await wait_for_job(stack, submitted.job_id, tenant.api_key)).job_id
    tune = await register_tune(stack, gone.api_key)
    kept_tune = await register_tune(stack, kept.api_key)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, format="PNG")

    async def parts():
        yield jobs_pb2.UploadImageRequest(filename="face.png")
        yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

    await stack.jobs.UploadImage(parts(), metadata=bearer(gone.api_key))
    assert await stack.store.list_keys(BUCKET_JOBS, f"jobs/{gone.tenant}/")
    assert await stack.store.list_keys(BUCKET_TUNES, f"tunes/{gone.tenant}/{tune.tune_id}/")

    removed = await stack.admin.DeleteTenant(
        admin_pb2.DeleteTenantRequest(tenant=gone.tenant), metadata=admin
    )
    assert (removed.keys_revoked, removed.jobs_deleted, removed.tunes_deleted) == (2, 1, 1)
    assert removed.objects_deleted >= 3  # the job's images, the tune's file, the upload
    for prefix in (f"jobs/{gone.tenant}/", f"uploads/{gone.tenant}/"):
        assert not await stack.store.list_keys(BUCKET_JOBS, prefix)
    assert not await stack.store.list_keys(BUCKET_TUNES, f"tunes/{gone.tenant}/")
    # Its keys authenticate nothing; the operator no longer sees it; nothing of it is left in the tenants KV.
    for key in (gone.api_key, second_key.api_key):
        denied = await rpc_error(stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(key)))
        assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
    usage = "multipass_tenant_jobs_submitted_total"
    assert REGISTRY.get_sample_value(usage, {"tenant": gone.tenant}) is None  # its usage series went too
    assert REGISTRY.get_sample_value(usage, {"tenant": kept.tenant}) == 1
    listed = await stack.admin.ListTenants(admin_pb2.ListTenantsRequest(), metadata=admin)
    assert [t.tenant for t in listed.tenants] == [kept.tenant]
    stored = await (await stack.bus.kv(KV_TENANTS)).entries(">")
    assert not any(gone.tenant in key or gone.tenant.encode() in value for key, value in stored)
    again = await rpc_error(
        stack.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=gone.tenant), metadata=admin)
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND and reason_of(again).reason == "UNKNOWN_TENANT"
    for odd in ("", "../jobs", "t" + "f" * 16, kept.tenant + ".*", ">"):
        unknown = await rpc_error(
            stack.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=odd), metadata=admin)
        )
        # A well-formed id names no tenant; anything else is no tenant id at all.
        expected = grpc.StatusCode.NOT_FOUND if odd == "t" + "f" * 16 else grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.code() == expected, odd
    # A tenant's own key is no admin credential; the other tenant keeps its job, images and tune.
    refused = await rpc_error(
        stack.admin.DeleteTenant(
            admin_pb2.DeleteTenantRequest(tenant=kept.tenant), metadata=bearer(kept.api_key)
        )
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    mine = bearer(kept.api_key)
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=jobs[kept.tenant]), metadata=mine)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert await stack.store.list_keys(BUCKET_JOBS, f"jobs/{kept.tenant}/")
    assert (
        await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=kept_tune.tune_id), metadata=mine)
    ).tune_id


async def test_a_tenants_own_limits_replace_the_gateways_for_it_alone(stack):
    await stack.start_gateway(auth_cache_seconds=0.2)
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    small, other = await stack.tenant("small"), await stack.tenant("other")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format="PNG")

    async def upload(key: str) -> jobs_pb2.UploadImageResponse:
        async def parts():
            yield jobs_pb2.UploadImageRequest(filename="face.png")
            yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

        return await stack.jobs.UploadImage(parts(), metadata=bearer(key))

    def set_limits(tenant: str, **limits):
        return stack.admin.SetTenantLimits(
            admin_pb2.SetTenantLimitsRequest(tenant=tenant, limits=admin_pb2.TenantLimits(**limits)),
            metadata=admin,
        )

    summary = await set_limits(small.tenant, max_uploads=1, max_pending_passes=1)
    assert (summary.tenant, summary.limits.max_uploads, summary.limits.max_pending_passes) == (
        small.tenant,
        1,
        1,
    )
    listed = await stack.admin.ListTenants(admin_pb2.ListTenantsRequest(), metadata=admin)
    assert {t.tenant: t.limits.max_uploads for t in listed.tenants} == {small.tenant: 1, other.tenant: 0}

    await upload(small.api_key)
    full = await rpc_error(upload(small.api_key))
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(full).metadata["scope"] == "uploads" and reason_of(full).metadata["limit"] == "1"
    two_images = jobs_pb2.SubmitJobRequest(
        prompt="a cat", params={"steps": "2", "w": "256", "h": "256", "num_images": "2"}
    )
    # Two passes can never fit a limit of one: refused for good, not told to retry.
    busy = await rpc_error(stack.jobs.SubmitJob(two_images, metadata=bearer(small.api_key)))
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(busy).metadata["scope"] == "tenant" and reason_of(busy).metadata["limit"] == "1"
    # The other tenant keeps the gateway's settings.
    for _ in range(2):
        await upload(other.api_key)
    submitted = await stack.jobs.SubmitJob(two_images, metadata=bearer(other.api_key))
    assert (await wait_for_job(stack, submitted.job_id, other.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED

    # One pass in flight at a time: a two-image job still runs to the end, its passes taking turns.
    summary = await set_limits(small.tenant, max_passes_in_flight=1)
    assert summary.limits.max_passes_in_flight == 1 and summary.limits.max_uploads == 0
    listed = await stack.admin.ListTenants(admin_pb2.ListTenantsRequest(), metadata=admin)
    assert {t.tenant: t.limits.max_passes_in_flight for t in listed.tenants}[small.tenant] == 1
    await upload(small.api_key)
    submitted = await stack.jobs.SubmitJob(two_images, metadata=bearer(small.api_key))
    assert (await wait_for_job(stack, submitted.job_id, small.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED

    # Back to the gateway's settings (0), at once on this replica.
    await set_limits(small.tenant)
    await upload(small.api_key)
    submitted = await stack.jobs.SubmitJob(two_images, metadata=bearer(small.api_key))
    assert submitted.job_id

    # Out of range and unknown tenants are named.
    bad = await rpc_error(
        set_limits(small.tenant, max_pending_passes=-1, max_uploads=100_001, max_passes_in_flight=-2)
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in field_violations(bad)) == [
        "limits.max_passes_in_flight",
        "limits.max_pending_passes",
        "limits.max_uploads",
    ]
    unknown = await rpc_error(set_limits("t" + "0" * 16, max_uploads=5))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


def _png(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_image_uploads_are_bounded_per_replica_and_tenant_paced_and_checked_again_before_storing(stack):
    """A replica receives a bounded number of images at once (a tenant half of them), an upload that stops
    sending is given up, and one whose key is revoked while it is sent stores nothing."""
    await stack.start_gateway(limits=Limits(max_image_uploads=2, upload_idle_seconds=2.5))
    owner, other = await stack.tenant("owner"), await stack.tenant("other")
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    release = asyncio.Event()

    def upload(key: str, wait: asyncio.Event | None = None):
        async def parts():
            yield jobs_pb2.UploadImageRequest(filename="x.png")
            data = _png()
            yield jobs_pb2.UploadImageRequest(chunk=data[:100])
            if wait is not None:
                await wait.wait()
            yield jobs_pb2.UploadImageRequest(chunk=data[100:])

        return stack.jobs.UploadImage(parts(), metadata=bearer(key))

    slow = asyncio.ensure_future(upload(owner.api_key, release))
    await asyncio.sleep(0.3)
    refused = await rpc_error(upload(owner.api_key))  # the owner's share (1 of 2) is taken
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "its share" in refused.details()
    assert dict(reason_of(refused).metadata)["scope"] == "image_uploads"
    assert (await upload(other.api_key)).image_id  # another tenant is not kept out
    release.set()
    assert (await slow).image_id

    stalled = await rpc_error(upload(owner.api_key, asyncio.Event()))  # never sends the rest
    assert stalled.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "given up" in stalled.details()

    before = set(await stack.store.list_keys(BUCKET_JOBS, f"uploads/{owner.tenant}/"))
    hold = asyncio.Event()
    revoked_meanwhile = asyncio.ensure_future(upload(owner.api_key, hold))
    await asyncio.sleep(0.3)
    await stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=owner.key_id), metadata=admin)
    hold.set()
    error = await rpc_error(revoked_meanwhile)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert set(await stack.store.list_keys(BUCKET_JOBS, f"uploads/{owner.tenant}/")) == before


async def test_a_tenant_being_removed_takes_no_new_key_and_none_outlives_it(stack):
    await stack.start_gateway(auth_cache_seconds=1.0)
    doomed = await stack.tenant("doomed")
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    removal = asyncio.ensure_future(
        stack.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=doomed.tenant), metadata=admin)
    )
    await asyncio.sleep(0.4)  # the removal waits out the auth cache after revoking: it is under way
    late = await rpc_error(
        stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=doomed.tenant), metadata=admin)
    )
    assert late.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), late.details()
    await removal
    error = await rpc_error(stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(doomed.api_key)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
