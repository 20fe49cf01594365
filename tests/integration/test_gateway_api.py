"""The gateway's public API around jobs: auth, validation with field violations, idempotency, tunes,
admin, uploads, budgets, and signed callbacks with retries."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import json
import logging
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    MODEL,
    SIGNING_KEY,
    ImageServer,
    bearer,
    capabilities_fixture,
    register_tune,
    rpc_error,
    safetensors_bytes,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from google.rpc import error_details_pb2
from grpc_probes import check_streaming_probes
from grpc_status import rpc_status
from PIL import Image

from multipass.callback_signing import tenant_key
from multipass.grpc.errors import field_violations, reason_of
from multipass.names import BUCKET_JOBS
from multipass.store import PublicEndpoint
from multipass.v1 import admin_pb2, jobs_pb2
from multipass_gateway.infra import callbacks
from multipass_gateway.settings import FetchAllowList, Limits


async def test_auth_admin_and_key_revocation(stack, caplog):
    caplog.set_level(logging.INFO, logger="multipass_gateway.audit")
    await stack.start_gateway()
    request = jobs_pb2.ListJobsRequest()
    assert (await rpc_error(stack.jobs.ListJobs(request))).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = "mpk_0123456789abcdef_" + "x" * 43
    assert (
        await rpc_error(stack.jobs.ListJobs(request, metadata=bearer(wrong)))
    ).code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await rpc_error(stack.jobs.ListJobs(request, metadata=bearer("garbage")))
    ).code() == grpc.StatusCode.UNAUTHENTICATED
    # The admin API wants the admin token.
    no_admin = await rpc_error(
        stack.admin.CreateTenant(admin_pb2.CreateTenantRequest(name="x"), metadata=bearer("nope"))
    )
    assert no_admin.code() == grpc.StatusCode.UNAUTHENTICATED
    tenant = await stack.tenant("acme")
    assert tenant.api_key.startswith("mpk_") and tenant.key_id and tenant.tenant
    assert not (await stack.jobs.ListJobs(request, metadata=bearer(tenant.api_key))).jobs
    # A second key for the tenant works; revoking the first stops it at once and leaves the second.
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    second = await stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=tenant.tenant), metadata=admin)
    revoked = await stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=tenant.key_id), metadata=admin)
    assert revoked.revoked
    denied = await rpc_error(stack.jobs.ListJobs(request, metadata=bearer(tenant.api_key)))
    assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not (await stack.jobs.ListJobs(request, metadata=bearer(second.api_key))).jobs
    again = await stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=tenant.key_id), metadata=admin)
    assert not again.revoked
    unknown = await rpc_error(
        stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id="0" * 16), metadata=admin)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    # Stored hashed: no KV value holds the key.
    stored = await (await stack.bus.kv("multipass-tenants")).entries(">")
    assert len(stored) == 4  # the tenant, both keys' id records, the lookup of the one live key
    secret = second.api_key.split("_", 2)[2]
    for key, value in stored:
        assert secret.encode() not in value and secret not in key
    assert any(key == f"key.{hashlib.sha256(second.api_key.encode()).hexdigest()}" for key, _ in stored)
    # Every change and every refused admin call is in the audit log, with ids and the caller, never a key.
    audited = [r for r in caplog.records if r.name == "multipass_gateway.audit"]
    assert [(r.action, getattr(r, "outcome", "")) for r in audited if r.levelno == logging.WARNING] == [
        ("tenant.create", "refused")
    ]
    done = {(r.action, getattr(r, "key_id", "")) for r in audited if r.levelno == logging.INFO}
    assert {
        ("tenant.create", tenant.key_id),
        ("key.create", second.key_id),
        ("key.revoke", tenant.key_id),
    } <= done
    assert all(r.peer for r in audited)
    for record in audited:
        assert secret not in record.getMessage() and secret not in str(record.__dict__)


async def test_operators_list_tenants_in_pages_and_each_tenants_keys_never_the_keys(stack):
    await stack.start_gateway()
    admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
    acme, globex, initech = [await stack.tenant(name) for name in ("acme", "globex", "initech")]
    second = await stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=acme.tenant), metadata=admin)
    await stack.admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=acme.key_id), metadata=admin)

    # Pages of two, oldest first, each tenant once, with its live keys counted.
    seen, token = [], ""
    while True:
        page = await stack.admin.ListTenants(
            admin_pb2.ListTenantsRequest(page_size=2, page_token=token), metadata=admin
        )
        assert len(page.tenants) <= 2
        seen += page.tenants
        token = page.next_page_token
        if not token:
            break
    assert [t.tenant for t in seen] == [acme.tenant, globex.tenant, initech.tenant]
    assert [t.name for t in seen] == ["acme", "globex", "initech"]
    assert [t.live_keys for t in seen] == [1, 1, 1]
    assert (
        seen[0].created_at.seconds > 0
        and seen[0].created_at.ToNanoseconds() <= seen[1].created_at.ToNanoseconds()
    )

    keys = (await stack.admin.ListKeys(admin_pb2.ListKeysRequest(tenant=acme.tenant), metadata=admin)).keys
    assert [(k.key_id, k.tenant, k.revoked) for k in keys] == [
        (acme.key_id, acme.tenant, True),
        (second.key_id, acme.tenant, False),
    ]
    assert keys[0].created_at.seconds > 0 and keys[0].revoked_at.seconds >= keys[0].created_at.seconds
    assert not keys[1].HasField("revoked_at")
    listed = (
        await stack.admin.ListKeys(admin_pb2.ListKeysRequest(tenant=acme.tenant), metadata=admin)
    ).SerializeToString()
    for api_key in (acme.api_key, second.api_key):
        assert api_key.split("_", 2)[2].encode() not in listed

    # A tenant's key cannot list anything; unknown tenants and bad paging are named.
    denied = await rpc_error(
        stack.admin.ListTenants(admin_pb2.ListTenantsRequest(), metadata=bearer(globex.api_key))
    )
    assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
    unknown = await rpc_error(
        stack.admin.ListKeys(admin_pb2.ListKeysRequest(tenant="t" + "0" * 16), metadata=admin)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    for tenant, described in (
        ("../etc", "got '../etc'; expected a tenant id: 't' and 16 hex digits"),
        ("", "is required (a tenant id from CreateTenant or ListTenants)"),
    ):
        for call in (
            stack.admin.ListKeys(admin_pb2.ListKeysRequest(tenant=tenant), metadata=admin),
            stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=tenant), metadata=admin),
            stack.admin.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=tenant), metadata=admin),
            stack.admin.SetTenantLimits(admin_pb2.SetTenantLimitsRequest(tenant=tenant), metadata=admin),
        ):
            malformed = await rpc_error(call)
            assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(field_violations(malformed)) == {"tenant": described}
    bad_size = await rpc_error(
        stack.admin.ListTenants(admin_pb2.ListTenantsRequest(page_size=-1), metadata=admin)
    )
    assert bad_size.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(bad_size)] == ["page_size"]
    for token in (
        "garbage",
        "YWZ0ZXI6eA==",
        "YWZ0ZXI6MS4wL3g=",
    ):  # not base64 of ours; "after:x"; "after:1.0/x"
        bad_token = await rpc_error(
            stack.admin.ListTenants(admin_pb2.ListTenantsRequest(page_token=token), metadata=admin)
        )
        assert bad_token.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in field_violations(bad_token)] == ["page_token"]


async def test_health_watch_and_reflection_v1_stream_and_close_cleanly(stack, caplog):
    await stack.start_gateway()
    for service_name in ("multipass.v1.Jobs", "multipass.v1.Tunes", "multipass.v1.Admin"):
        await check_streaming_probes(stack.gateway.address, service_name, caplog)


async def test_image_urls_point_at_the_public_s3_endpoint_and_download(stack):
    port = stack.s3_settings.endpoint.rpartition(":")[2]
    await stack.start_gateway(s3_public_endpoint=PublicEndpoint.parse(f"http://localhost:{port}"))
    tenant = await stack.tenant("acme")
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "2", "w": "256", "h": "256"}),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.images
    url = job.images[0].url
    assert url.startswith(f"http://localhost:{port}/"), url
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert Image.open(io.BytesIO(body)).size == (256, 256)


async def test_submit_validation_errors_carry_field_violations(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)

    async def violations(request: jobs_pb2.SubmitJobRequest) -> dict[str, str]:
        error = await rpc_error(stack.jobs.SubmitJob(request, metadata=metadata))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        return dict(field_violations(error))

    # The parser's violations reach the user unchanged.
    found = await violations(jobs_pb2.SubmitJobRequest(prompt="a cat\nstesp=30"))
    assert list(found) == ["params.stesp"] and "steps" in found["params.stesp"]
    found = await violations(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "500", "cfg_scale": "99"})
    )
    assert set(found) == {"params.steps", "params.cfg_scale"}
    # Tunes: missing, and another tenant's, are NOT_FOUND (as common.proto promises) naming the tag.
    other = await stack.tenant("other")
    foreign = await register_tune(stack, other.api_key)
    prompt = f"a room BREAK BREAK ohwx woman <lora:999:1> BREAK ohwx man <lora:{foreign.tune_id}:0.5>"
    error = await rpc_error(stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt=prompt), metadata=metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert dict(field_violations(error)) == {
        "<lora:999:1>": "tune '999' does not exist",
        f"<lora:{foreign.tune_id}:0.5>": f"tune '{foreign.tune_id}' does not exist",
    }
    assert reason_of(error).reason == "UNKNOWN_TUNE"
    assert dict(reason_of(error).metadata) == {"tuneIds": f"999,{foreign.tune_id}"}
    # The persons were laid out while the tunes were checked: the refused job left no object of its own
    # behind (the default layout's pose image is the tenant's, shared by its jobs of that size).
    left = await stack.store.list_keys(BUCKET_JOBS, f"jobs/{tenant.tenant}/")
    assert all(key.startswith(f"jobs/{tenant.tenant}/layouts/") for key in left), left
    # A tune of the wrong family.
    sdxl = await register_tune(stack, tenant.api_key, family="sdxl")
    found = await violations(
        jobs_pb2.SubmitJobRequest(prompt=f"a room BREAK BREAK ohwx woman <lora:{sdxl.tune_id}:1>")
    )
    assert "is a sdxl lora; model tiny-sd15 is sd15" in found[f"<lora:{sdxl.tune_id}:1>"]
    # URLs that point inside our network; malformed request fields.
    found = await violations(
        jobs_pb2.SubmitJobRequest(
            prompt="a cat",
            params={
                "input_image_url": "http://169.254.169.254/latest/meta-data/",
                "denoising_strength": "0.5",
            },
            callback_url="http://10.0.0.1/hook",
        )
    )
    assert set(found) == {"callback_url"} and "private" in found["callback_url"]
    found = await violations(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"input_image_url": "http://2130706433/x.png"})
    )
    assert "loopback" in found["params.input_image_url"]
    found = await violations(
        jobs_pb2.SubmitJobRequest(prompt="a cat", input_image_id="../../etc", idempotency_key="a b")
    )
    assert set(found) == {"input_image_id", "idempotency_key"}
    # An image id that names no upload is NOT_FOUND too.
    error = await rpc_error(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", input_image_id="ab" * 12), metadata=metadata
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert dict(field_violations(error)) == {"input_image_id": f"no uploaded image {'ab' * 12!r}"}
    assert reason_of(error).reason == "UNKNOWN_IMAGE"
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata)).jobs


async def test_idempotency_key_returns_the_same_job(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    request = jobs_pb2.SubmitJobRequest(
        prompt="a cat", params={"steps": "2", "w": "256", "h": "256"}, idempotency_key="order-17"
    )
    first, second = await asyncio.gather(
        stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key)),
        stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key)),
    )
    assert first.job_id == second.job_id and sorted([first.existing, second.existing]) == [False, True]
    third = await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))
    assert third.job_id == first.job_id and third.existing
    # The same key of another tenant is another job.
    other = await stack.tenant("other")
    theirs = await stack.jobs.SubmitJob(request, metadata=bearer(other.api_key))
    assert theirs.job_id != first.job_id and not theirs.existing
    listed = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(tenant.api_key))
    assert [j.job_id for j in listed.jobs] == [first.job_id]
    assert (await wait_for_job(stack, first.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    # A new key is a new job; listing pages newest first.
    request.idempotency_key = "order-18"
    newer = await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))
    assert not newer.existing and newer.job_id != first.job_id
    page = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=bearer(tenant.api_key))
    assert [j.job_id for j in page.jobs] == [newer.job_id] and page.next_page_token
    rest = await stack.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(page_size=1, page_token=page.next_page_token),
        metadata=bearer(tenant.api_key),
    )
    assert [j.job_id for j in rest.jobs] == [first.job_id] and not rest.next_page_token
    # A client's own namespace of keys: only its jobs, newest first.
    by_prefix = await stack.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(idempotency_key_prefix="order-18"), metadata=bearer(tenant.api_key)
    )
    assert [j.job_id for j in by_prefix.jobs] == [newer.job_id]
    by_prefix = await stack.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(idempotency_key_prefix="order-", page_size=1),
        metadata=bearer(tenant.api_key),
    )
    assert [j.job_id for j in by_prefix.jobs] == [newer.job_id] and by_prefix.next_page_token
    assert not (
        await stack.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(idempotency_key_prefix="invoice-"), metadata=bearer(tenant.api_key)
        )
    ).jobs
    bad = await rpc_error(
        stack.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(page_size=500, page_token="x", idempotency_key_prefix="k" * 129),
            metadata=bearer(tenant.api_key),
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and set(dict(field_violations(bad))) == {
        "page_size",
        "page_token",
        "idempotency_key_prefix",
    }


async def test_tunes_register_get_list_delete(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    first = await register_tune(stack, tenant.api_key)
    second = await register_tune(stack, tenant.api_key, family="sdxl")
    assert first.tune_id.isdigit() and first.file.sha256 and first.file.size == len(safetensors_bytes())
    assert first.file.key == f"tunes/{tenant.tenant}/{first.tune_id}/lora.safetensors"
    assert await stack.store.exists(first.file.bucket, first.file.key)
    assert (
        await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=first.tune_id), metadata=metadata)
    ) == first
    page = await stack.tunes.ListTunes(jobs_pb2.ListTunesRequest(page_size=1), metadata=metadata)
    assert [t.tune_id for t in page.tunes] == [second.tune_id] and page.next_page_token
    rest = await stack.tunes.ListTunes(
        jobs_pb2.ListTunesRequest(page_size=1, page_token=page.next_page_token), metadata=metadata
    )
    assert [t.tune_id for t in rest.tunes] == [first.tune_id] and not rest.next_page_token

    async def parts(*messages):
        for message in messages:
            yield message

    bad = await rpc_error(
        stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family="sd15")
                ),
                jobs_pb2.RegisterTuneRequest(chunk=b"\x80\x02pickled checkpoint" * 10),
            ),
            metadata=metadata,
        )
    )
    assert (
        bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "safetensors" in dict(field_violations(bad))["chunk"]
    )
    wrong_sum = await rpc_error(
        stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(
                        token="ohwx", class_name="woman", base_family="sd15", sha256="0" * 64
                    )
                ),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ),
            metadata=metadata,
        )
    )
    assert "metadata.sha256" in dict(field_violations(wrong_sum))
    refused_url = await rpc_error(
        stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(
                        token="ohwx", class_name="woman", base_family="sd15", url="http://127.0.0.1:1/lora"
                    )
                )
            ),
            metadata=metadata,
        )
    )
    assert "loopback" in dict(field_violations(refused_url))["metadata.url"]
    assert (
        await stack.tunes.DeleteTune(jobs_pb2.DeleteTuneRequest(tune_id=first.tune_id), metadata=metadata)
    ).deleted
    assert not await stack.store.exists(first.file.bucket, first.file.key)
    gone = await rpc_error(
        stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=first.tune_id), metadata=metadata)
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_upload_and_keep_background_job(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (120, 130, 140)).save(buffer, format="JPEG")

    async def parts():
        yield jobs_pb2.UploadImageRequest(filename="scene.jpg")
        yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

    upload = await stack.jobs.UploadImage(parts(), metadata=bearer(tenant.api_key))
    assert upload.image.key == f"uploads/{tenant.tenant}/{upload.image_id}.png" and (
        upload.image.width,
        upload.image.height,
    ) == (300, 200)

    async def not_an_image():
        yield jobs_pb2.UploadImageRequest(chunk=b"<html>hello</html>")

    error = await rpc_error(stack.jobs.UploadImage(not_an_image(), metadata=bearer(tenant.api_key)))
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "is not an image" in dict(field_violations(error))["chunk"]
    )

    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="BREAK BREAK ohwx woman", params={"steps": "2"}, input_image_id=upload.image_id
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.parsed.keep_background
    image = job.images[0]
    assert [p.name for p in image.passes] == ["prepare", "segment", "person-0"]
    assert (job.parsed.params.w, job.parsed.params.h) == (296, 200)
    assert image.passes[0].output.key.endswith("inputs/input.png")
    assert not image.passes[1].output.key  # the segment pass's result is its mask, not an image
    assert image.masks["person-0"].key.endswith("image-0/mask-person-0.png")
    assert image.final.key.endswith("image-0/person-0.png")


async def test_pending_pass_budget_is_resource_exhausted_with_retry_info(stack):
    limits = Limits(tenant_max_pending_passes=3, global_max_pending_passes=5, retry_after_seconds=7.0)
    await stack.start_gateway(limits=limits)
    tenant = await stack.tenant()
    stack.worker.gate.clear()
    request = jobs_pb2.SubmitJobRequest(
        prompt="a cat", params={"num_images": "2", "steps": "2", "w": "256", "h": "256"}
    )
    await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))  # 2 passes pending
    error = await rpc_error(stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "for this tenant" in error.details()
    status = rpc_status.from_call(error)
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.seconds == 7
    # Another tenant has its own budget, until the global one runs out.
    other = await stack.tenant("other")
    assert (await stack.jobs.SubmitJob(request, metadata=bearer(other.api_key))).job_id  # 4 pending in all
    third = await stack.tenant("third")
    error = await rpc_error(stack.jobs.SubmitJob(request, metadata=bearer(third.api_key)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "pending-work limit" in error.details()
    # Finished jobs free the budget.
    stack.worker.gate.set()
    for listed in (tenant, other):
        for job in (
            await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(listed.api_key))
        ).jobs:
            await wait_for_job(stack, job.job_id, listed.api_key)
    for _ in range(50):
        try:
            assert (await stack.jobs.SubmitJob(request, metadata=bearer(third.api_key))).job_id
            break
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.1)
    else:
        pytest.fail("budget not freed after the jobs ended")


class CallbackReceiver:
    """A loopback HTTP server that fails the first ``failures`` POSTs with 503, then answers 200."""

    def __init__(self, failures: int):
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if len(receiver.received) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/multipass"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_signed_callback_is_retried_until_delivered(stack):
    allow = FetchAllowList(networks=(ipaddress.ip_network("127.0.0.1/32"),))
    await stack.start_gateway(fetch_allow=allow)
    tenant = await stack.tenant()
    receiver = CallbackReceiver(failures=1)
    failing = CallbackReceiver(failures=100)
    try:
        ok = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                prompt="a cat", params={"steps": "2", "w": "256", "h": "256"}, callback_url=receiver.url
            ),
            metadata=bearer(tenant.api_key),
        )
        bad = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                prompt="a dog", params={"steps": "2", "w": "256", "h": "256"}, callback_url=failing.url
            ),
            metadata=bearer(tenant.api_key),
        )
        for _ in range(100):
            job = await stack.jobs.GetJob(
                jobs_pb2.GetJobRequest(job_id=ok.job_id), metadata=bearer(tenant.api_key)
            )
            other = await stack.jobs.GetJob(
                jobs_pb2.GetJobRequest(job_id=bad.job_id), metadata=bearer(tenant.api_key)
            )
            if job.callback_outcome and other.callback_outcome:
                break
            await asyncio.sleep(0.1)
        assert job.callback_outcome == "delivered (HTTP 200, attempt 2)" and job.callback_attempts == 2
        assert other.callback_outcome == "failed after 3 attempts: HTTP 503" and other.callback_attempts == 3
        assert len(receiver.received) == 2 and len(failing.received) == 3
        headers, body = receiver.received[-1]
        # Signed with the tenant's own key (GetCallbackKey gives it), never the deployment's secret, so
        # one tenant's key neither checks nor forges another's callbacks.
        mine = await stack.jobs.GetCallbackKey(
            jobs_pb2.GetCallbackKeyRequest(), metadata=bearer(tenant.api_key)
        )
        assert mine.callback_signing_key == tenant_key(SIGNING_KEY, tenant.tenant)
        assert headers["x-multipass-tenant"] == tenant.tenant
        assert callbacks.verify(headers["x-multipass-signature"], body, mine.callback_signing_key)
        assert not callbacks.verify(headers["x-multipass-signature"], body, SIGNING_KEY)
        someone = await stack.tenant("someone-else")
        theirs = await stack.jobs.GetCallbackKey(
            jobs_pb2.GetCallbackKeyRequest(), metadata=bearer(someone.api_key)
        )
        assert theirs.callback_signing_key != mine.callback_signing_key
        assert not callbacks.verify(headers["x-multipass-signature"], body, theirs.callback_signing_key)
        payload = json.loads(body)
        assert payload["job_id"] == ok.job_id and payload["state"] == "JOB_STATE_SUCCEEDED"
        assert payload["images"][0]["url"].startswith("http")
    finally:
        receiver.close()
        failing.close()


async def test_callback_url_inside_the_network_is_refused_without_allow_list(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    error = await rpc_error(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", callback_url="http://127.0.0.1:9/x"),
            metadata=bearer(tenant.api_key),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "loopback" in dict(field_violations(error))["callback_url"]


async def test_input_image_url_is_fetched_stored_and_inpainted_in_the_prompt_mask(stack):
    allow = FetchAllowList(networks=(ipaddress.ip_network("127.0.0.1/32"),))
    await stack.start_gateway(fetch_allow=allow)
    tenant = await stack.tenant()
    buffer = io.BytesIO()
    Image.new("RGB", (512, 384), (200, 180, 160)).save(buffer, format="PNG")
    server = ImageServer(buffer.getvalue())
    try:
        submitted = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                prompt="a sunny kitchen --mask_prompt windows --mask_invert",
                params={"input_image_url": server.url, "steps": "2"},
            ),
            metadata=bearer(tenant.api_key),
        )
        job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    finally:
        server.close()
    assert server.hits == 1
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    image = job.images[0]
    assert [p.name for p in image.passes] == ["prepare", "mask", "base"]
    stored = image.passes[0].output
    assert stored.key == f"jobs/{tenant.tenant}/{job.job_id}/inputs/input.png"
    assert (stored.width, stored.height) == (job.parsed.params.w, job.parsed.params.h)
    assert abs(stored.width / stored.height - 4 / 3) < 0.05  # the input's aspect at the model's area
    assert "prompt" in image.masks
    base = next(r for r in stack.worker.seen if r.pass_name == "base")
    assert base.spec.image.key == stored.key and base.spec.mask.key == image.masks["prompt"].key


async def test_tune_characteristics_fill_the_placeholders_of_prompts(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)

    async def register(characteristics):
        async def parts():
            yield jobs_pb2.RegisterTuneRequest(
                metadata=jobs_pb2.TuneMetadata(
                    token="ohwx", class_name="woman", base_family="sd15", characteristics=characteristics
                )
            )
            yield jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes())

        return await stack.tunes.RegisterTune(parts(), metadata=metadata)

    tune = await register({"eye_color": "green eyes", "outfit": "red silk dress"})
    assert dict(tune.characteristics) == {"eye_color": "green eyes", "outfit": "red silk dress"}
    got = await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    assert dict(got.characteristics) == dict(tune.characteristics)
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt=f"a gala BREAK photo BREAK ohwx woman, {{{{outfit}}}}, {{{{ eye_color }}}} <lora:{tune.tune_id}:1>",
            params={"steps": "2", "w": "256", "h": "256"},
        ),
        metadata=metadata,
    )
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=submitted.job_id), metadata=metadata)
    (person,) = job.parsed.persons
    assert "ohwx woman, red silk dress, green eyes" in person.effective_prompt and "{{" not in person.prompt
    unknown = await rpc_error(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt=f"ohwx woman, {{{{hair}}}} <lora:{tune.tune_id}:1>"),
            metadata=metadata,
        )
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = dict(field_violations(unknown))
    assert "{{hair}}" in found["prompt"] and "eye_color, outfit" in found["prompt"]
    bad = await rpc_error(register({"eye color": "blue", "hair": "x" * 300}))
    assert set(dict(field_violations(bad))) == {"metadata.characteristics", "metadata.characteristics[hair]"}


async def test_update_tune_changes_name_class_and_characteristics_only(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    other = await stack.tenant("other")
    metadata = bearer(tenant.api_key)
    tune = await register_tune(stack, tenant.api_key)

    def update(**fields) -> jobs_pb2.UpdateTuneRequest:
        paths = fields.pop("paths", ())
        request = jobs_pb2.UpdateTuneRequest(tune_id=tune.tune_id, **fields)
        request.update_mask.paths.extend(paths)
        return request

    renamed = await stack.tunes.UpdateTune(
        update(name="Anna", characteristics={"eye_color": "green eyes"}), metadata=metadata
    )
    assert renamed.name == "Anna" and dict(renamed.characteristics) == {"eye_color": "green eyes"}
    assert (renamed.token, renamed.class_name, renamed.file) == (tune.token, tune.class_name, tune.file)
    assert (
        await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    ) == renamed
    # A mask naming characteristics with an empty map clears them; the name stays.
    cleared = await stack.tunes.UpdateTune(update(paths=["characteristics"]), metadata=metadata)
    assert not cleared.characteristics and cleared.name == "Anna"
    # Refusals name the field; nothing changes.
    for request, field in (
        (update(paths=["token"]), "update_mask"),
        (update(), "update_mask"),
        (update(class_name="Dog!"), "class_name"),
        (update(characteristics={"bad name": "x"}), "characteristics"),
        (update(name="x" * 101), "name"),
    ):
        error = await rpc_error(stack.tunes.UpdateTune(request, metadata=metadata))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in dict(field_violations(error)), (request, field_violations(error))
    # Another tenant's tune does not exist for the caller.
    hidden = await rpc_error(stack.tunes.UpdateTune(update(name="Mine"), metadata=bearer(other.api_key)))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    anonymous = await rpc_error(stack.tunes.UpdateTune(update(name="Mine")))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    final = await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    assert final == cleared


@pytest.mark.parametrize(
    "capabilities", [["pass:base", "pass:person", f"faceid:{MODEL}", "face_swapper"]], ids=["faceid"]
)
async def test_a_faceid_tune_is_reference_images_only(stack):
    """Astria's ``model_type=faceid`` tunes have no weights: the reference faces are the identity."""
    await stack.start_gateway()
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "tan").save(buffer, "PNG")

    async def upload_parts():
        yield jobs_pb2.UploadImageRequest(filename="face.png")
        yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

    uploaded = await stack.jobs.UploadImage(upload_parts(), metadata=metadata)

    async def parts(*messages):
        for message in messages:
            yield message

    faceid = jobs_pb2.TuneMetadata(
        token="ohwx", class_name="woman", kind="faceid", reference_image_ids=[uploaded.image_id]
    )
    tune = await stack.tunes.RegisterTune(
        parts(jobs_pb2.RegisterTuneRequest(metadata=faceid)), metadata=metadata
    )
    assert tune.kind == "faceid" and not tune.file.key and len(tune.reference_images) == 1
    # The uploaded face is copied under the tune (deleted with it below), not left pointing at the upload.
    face = tune.reference_images[0]
    assert face.key == f"tunes/{tenant.tenant}/{tune.tune_id}/reference-0" and (face.width, face.height) == (
        64,
        64,
    )
    # Answers carry a signed link per reference image (never stored with the tune).
    (link,) = tune.reference_image_urls
    assert f"/{face.bucket}/{face.key}?" in link and "X-Amz-Signature=" in link
    fetched = await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    assert len(fetched.reference_image_urls) == 1
    listed = await stack.tunes.ListTunes(jobs_pb2.ListTunesRequest(), metadata=metadata)
    assert [len(t.reference_image_urls) for t in listed.tunes if t.tune_id == tune.tune_id] == [1]
    # Used as <faceid:...>: accepted; as <lora:...>: refused with the tag to write.
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt=f"a gala BREAK BREAK ohwx woman <faceid:{tune.tune_id}:1>", params={"w": "256", "h": "256"}
        ),
        metadata=metadata,
    )
    assert submitted.job_id
    error = await rpc_error(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt=f"ohwx woman <lora:{tune.tune_id}:1>"), metadata=metadata
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"write <faceid:{tune.tune_id}:1>" in dict(field_violations(error))[f"<lora:{tune.tune_id}:1>"]
    # A faceid tune with a file, or without reference images, is refused naming the field.
    with_file = faceid.__class__(token="ohwx", class_name="woman", kind="faceid")
    bad = await rpc_error(
        stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(metadata=with_file),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ),
            metadata=metadata,
        )
    )
    assert set(dict(field_violations(bad))) == {"chunk", "metadata.reference_image_ids"}
    # Deleting it removes the record and the copy of the face.
    assert (
        await stack.tunes.DeleteTune(jobs_pb2.DeleteTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    ).deleted
    assert not await stack.store.exists(face.bucket, face.key)


async def test_reference_images_from_urls_are_fetched_safely_and_stored_with_the_tune(stack):
    allow = FetchAllowList(networks=(ipaddress.ip_network("127.0.0.1/32"),))
    await stack.start_gateway(fetch_allow=allow)
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    buffer = io.BytesIO()
    Image.new("RGB", (80, 96), "tan").save(buffer, format="JPEG")
    server = ImageServer(buffer.getvalue())

    async def parts(*messages):
        for message in messages:
            yield message

    try:
        faceid = jobs_pb2.TuneMetadata(
            token="ohwx", class_name="woman", kind="faceid", reference_image_urls=[server.url, server.url]
        )
        tune = await stack.tunes.RegisterTune(
            parts(jobs_pb2.RegisterTuneRequest(metadata=faceid)), metadata=metadata
        )
        lora = jobs_pb2.TuneMetadata(
            token="ohwx", class_name="woman", base_family="sd15", reference_image_urls=[server.url]
        )
        with_file = await stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(metadata=lora),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ),
            metadata=metadata,
        )
    finally:
        server.close()
    assert server.hits == 3
    keys = [ref.key for ref in tune.reference_images]
    prefix = f"tunes/{tenant.tenant}/{tune.tune_id}/"
    assert keys == [prefix + "reference-0", prefix + "reference-1"]
    assert [(r.width, r.height) for r in tune.reference_images] == [(80, 96), (80, 96)]
    assert all(await asyncio.gather(*(stack.store.exists(r.bucket, r.key) for r in tune.reference_images)))
    assert with_file.reference_images[0].key.startswith(f"tunes/{tenant.tenant}/{with_file.tune_id}/")
    # A URL inside the network without an allow-list entry, or one that is no image, is refused naming it.
    refused = await rpc_error(
        stack.tunes.RegisterTune(
            parts(
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(
                        token="ohwx",
                        class_name="woman",
                        kind="faceid",
                        reference_image_urls=["http://10.0.0.1/a.png"],
                    )
                )
            ),
            metadata=metadata,
        )
    )
    assert "metadata.reference_image_urls[0]" in dict(field_violations(refused))
    # Deleting the tune deletes the images fetched for it.
    await stack.tunes.DeleteTune(jobs_pb2.DeleteTuneRequest(tune_id=tune.tune_id), metadata=metadata)
    assert not await stack.store.exists(tune.reference_images[0].bucket, tune.reference_images[0].key)
