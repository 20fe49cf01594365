"""The gateway's errors as the protos promise them: every numeric, enum, timestamp and repeated field of every
public request range-checked into INVALID_ARGUMENT naming the field; echoed values capped (a 100 KB id is a
clean INVALID_ARGUMENT, not a broken stream) and never object reprs; each thing said once; ErrorInfo reasons
on every error; NOT_FOUND for references to what does not exist; a key without "Bearer " told how the
header must look; an idempotency key reused with another request refused, a true repeat answered with its
original warnings."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    bearer,
    capabilities_fixture,
    register_tune,
    rpc_error,
    safetensors_bytes,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from multipass.errors import ERROR_DOMAIN
from multipass.grpc.errors import MESSAGE_BYTES, field_violations, reason_of
from multipass.v1 import admin_pb2, jobs_pb2
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(120)
FAST = {"steps": "1", "w": "256", "h": "256"}
HUGE = "j" * 100_000
NUMERIC = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_ENUM,
}
WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


def reason(error: grpc.aio.AioRpcError) -> str:
    info = reason_of(error)
    assert info is not None and info.domain == ERROR_DOMAIN, (error.code(), error.details())
    return info.reason


def ranged_fields(descriptor: Descriptor, prefix: str = "") -> set[str]:
    """Paths of the numeric, enum, well-known-type and repeated fields of a request type (recursively)."""
    found = set()
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        well_known = field.message_type is not None and field.message_type.full_name in WELL_KNOWN
        if field.is_repeated or field.type in NUMERIC or well_known:
            found.add(path)
        elif field.message_type is not None:
            found |= ranged_fields(field.message_type, f"{path}.")
    return found


def public_request_types() -> dict[str, Descriptor]:
    services = [jobs_pb2.DESCRIPTOR.services_by_name[name] for name in ("Jobs", "Tunes")]
    services.append(admin_pb2.DESCRIPTOR.services_by_name["Admin"])
    return {method.input_type.name: method.input_type for service in services for method in service.methods}


async def drain(call) -> list:
    return [event async for event in call]


def stream_of(*messages):
    async def parts():
        for message in messages:
            yield message

    return parts()


async def test_every_ranged_field_of_every_public_request_is_checked_into_invalid_argument(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    mine = bearer(tenant.api_key)
    jobs, tunes = stack.jobs, stack.tunes
    tune_metadata = {"token": "ohwx", "class_name": "woman", "base_family": "sd15"}

    def register(**fields):
        """RegisterTune of a LoRA with ``fields`` added to its metadata."""
        metadata = jobs_pb2.TuneMetadata(**tune_metadata, **fields)
        return tunes.RegisterTune(
            stream_of(
                jobs_pb2.RegisterTuneRequest(metadata=metadata),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ),
            metadata=mine,
        )

    # One out-of-range value per ranged field: (request type, field path) -> (call, violated field).
    cases = {
        ("ListJobsRequest", "page_size"): (
            jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=101), metadata=mine),
            "page_size",
        ),
        ("ListJobsRequest", "states"): (
            jobs.ListJobs(jobs_pb2.ListJobsRequest(states=[99]), metadata=mine),
            "states",
        ),
        ("ListJobsRequest", "created_after"): (
            jobs.ListJobs(
                jobs_pb2.ListJobsRequest(created_after=timestamp_pb2.Timestamp(seconds=253_402_300_800)),
                metadata=mine,
            ),
            "created_after.seconds",
        ),
        ("ListJobsRequest", "created_before"): (
            jobs.ListJobs(
                jobs_pb2.ListJobsRequest(created_before=timestamp_pb2.Timestamp(nanos=-1)), metadata=mine
            ),
            "created_before.nanos",
        ),
        ("WatchJobRequest", "after_sequence"): (
            drain(jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id="a" * 24, after_sequence=-1), metadata=mine)),
            "after_sequence",
        ),
        ("ListTunesRequest", "page_size"): (
            tunes.ListTunes(jobs_pb2.ListTunesRequest(page_size=-1), metadata=mine),
            "page_size",
        ),
        **{
            ("SetTenantLimitsRequest", f"limits.{name}"): (
                stack.admin.SetTenantLimits(
                    admin_pb2.SetTenantLimitsRequest(
                        tenant=tenant.tenant, limits=admin_pb2.TenantLimits(**{name: value})
                    ),
                    metadata=[("x-multipass-admin-token", ADMIN_TOKEN)],
                ),
                f"limits.{name}",
            )
            for name, value in (
                ("max_pending_passes", 1_000_001),
                ("max_uploads", -1),
                ("max_passes_in_flight", 100_001),
            )
        },
        ("ListTenantsRequest", "page_size"): (
            stack.admin.ListTenants(
                admin_pb2.ListTenantsRequest(page_size=1001),
                metadata=[("x-multipass-admin-token", ADMIN_TOKEN)],
            ),
            "page_size",
        ),
        ("SubmitJobRequest", "params"): (
            jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(prompt="a cat", params={f"p{i}": "1" for i in range(65)}),
                metadata=mine,
            ),
            "params",
        ),
        ("RegisterTuneRequest", "metadata.reference_image_ids"): (
            register(reference_image_ids=["0" * 24] * 11),
            "metadata.reference_image_ids",
        ),
        ("RegisterTuneRequest", "metadata.characteristics"): (
            register(characteristics={f"k{i}": "v" for i in range(33)}),
            "metadata.characteristics",
        ),
        ("RegisterTuneRequest", "metadata.reference_image_urls"): (
            register(reference_image_urls=["https://example.com/f.png"] * 11),
            "metadata.reference_image_urls",
        ),
        ("UpdateTuneRequest", "characteristics"): (
            tunes.UpdateTune(
                jobs_pb2.UpdateTuneRequest(tune_id="1", characteristics={f"k{i}": "v" for i in range(33)}),
                metadata=mine,
            ),
            "characteristics",
        ),
        ("UpdateTuneRequest", "update_mask.paths"): (
            tunes.UpdateTune(
                jobs_pb2.UpdateTuneRequest(tune_id="1", update_mask={"paths": ["file"]}), metadata=mine
            ),
            "update_mask",
        ),
    }
    covered = {
        (name, path)
        for name, descriptor in public_request_types().items()
        for path in ranged_fields(descriptor)
    }
    assert covered == set(cases), "a public request field with a range has no check (or the table is stale)"
    for (name, path), (call, violated) in cases.items():
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, path, error.code(), error.details())
        assert violated in dict(field_violations(error)), (name, path, field_violations(error))
        assert reason(error) == "INVALID_ARGUMENT"
    # The four out-of-range timestamps of the outside test, and an unknown state naming the allowed ones.
    for seconds, nanos, field in (
        (253_402_300_800, 0, "seconds"),
        (-62_135_596_801, 0, "seconds"),
        (0, 1_000_000_000, "nanos"),
        (0, -1, "nanos"),
    ):
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        for bound in ("created_after", "created_before"):
            error = await rpc_error(jobs.ListJobs(jobs_pb2.ListJobsRequest(**{bound: stamp}), metadata=mine))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert list(dict(field_violations(error))) == [f"{bound}.{field}"]
    error = await rpc_error(jobs.ListJobs(jobs_pb2.ListJobsRequest(states=[2, 42]), metadata=mine))
    assert "got 42; expected JobState values: JOB_STATE_QUEUED (1)" in dict(field_violations(error))["states"]
    # The ends of the ranges are fine.
    listed = await jobs.ListJobs(
        jobs_pb2.ListJobsRequest(
            page_size=100,
            states=[jobs_pb2.JOB_STATE_SUCCEEDED] * 16,
            created_after=timestamp_pb2.Timestamp(seconds=-62_135_596_800),
            created_before=timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999),
        ),
        metadata=mine,
    )
    assert not listed.jobs


async def test_echoed_values_are_capped_said_once_and_never_object_reprs(stack):
    await stack.start_gateway(limits=Limits(max_image_bytes=64 * 1024))
    tenant = await stack.tenant()
    mine = bearer(tenant.api_key)
    # A 100 KB job id: a clean INVALID_ARGUMENT with the value cut short (was RESOURCE_EXHAUSTED "Stream removed").
    calls = {
        "GetJob": stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=HUGE), metadata=mine),
        "CancelJob": stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=HUGE), metadata=mine),
        "WatchJob": drain(stack.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=HUGE), metadata=mine)),
    }
    for name, call in calls.items():
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.code(), error.details())
        assert len(error.details().encode()) <= MESSAGE_BYTES
        description = dict(field_violations(error))["job_id"]
        assert "…' (100000 characters)" in description and len(description) < 200, description
    # A 100 KB tune id, and unknown ids: NOT_FOUND with their reasons.
    error = await rpc_error(stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=HUGE), metadata=mine))
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 200
    assert reason(error) == "UNKNOWN_TUNE"
    error = await rpc_error(stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id="a" * 24), metadata=mine))
    assert (error.code(), reason(error), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_JOB",
        f"job {'a' * 24!r} does not exist",
    )
    # Each thing once.
    error = await rpc_error(stack.jobs.GetJob(jobs_pb2.GetJobRequest(), metadata=mine))
    assert error.details() == "invalid job_id: is required"
    for empty in (
        stack.tunes.GetTune(jobs_pb2.GetTuneRequest(), metadata=mine),
        stack.tunes.DeleteTune(jobs_pb2.DeleteTuneRequest(), metadata=mine),
    ):
        error = await rpc_error(empty)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid tune_id: is required",
        )
    # An image Pillow cannot identify: the problem, not the stream object and its address.
    error = await rpc_error(
        stack.jobs.UploadImage(
            stream_of(jobs_pb2.UploadImageRequest(chunk=b"\x89PNG\r\n\x1a\n" + b"\0" * 64)), metadata=mine
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = error.details() + repr(field_violations(error))
    assert "0x" not in text and "BytesIO" not in text and "damaged or truncated PNG" in text
    # An image over the size limit has its own reason.
    big = await rpc_error(
        stack.jobs.UploadImage(
            stream_of(
                jobs_pb2.UploadImageRequest(chunk=b"\x89PNG\r\n\x1a\n" + b"\0" * 40_000),
                jobs_pb2.UploadImageRequest(chunk=b"\0" * 40_000),
            ),
            metadata=mine,
        )
    )
    assert (big.code(), reason(big)) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE")


async def test_credentials_errors_say_what_is_wrong_with_their_reason(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    request = jobs_pb2.ListJobsRequest()
    bare = await rpc_error(stack.jobs.ListJobs(request, metadata=[("authorization", tenant.api_key)]))
    assert bare.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "must be 'Bearer <api key>'" in bare.details() and tenant.api_key not in bare.details()
    assert reason(bare) == "API_KEY_MALFORMED"
    absent = await rpc_error(stack.jobs.ListJobs(request))
    assert (absent.code(), reason(absent)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    unknown = await rpc_error(
        stack.jobs.ListJobs(request, metadata=bearer("mpk_0123456789abcdef_" + "x" * 43))
    )
    assert (unknown.code(), reason(unknown)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    admin = await rpc_error(
        stack.admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=tenant.tenant), metadata=bearer("nope"))
    )
    assert (admin.code(), reason(admin)) == (grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_INVALID")
    nobody = await rpc_error(
        stack.admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="t" + "0" * 16),
            metadata=[("x-multipass-admin-token", ADMIN_TOKEN)],
        )
    )
    assert (nobody.code(), reason(nobody)) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_TENANT")
    # The scheme is case-insensitive, as HTTP's.
    assert not (
        await stack.jobs.ListJobs(request, metadata=[("authorization", f"bearer {tenant.api_key}")])
    ).jobs


async def test_an_idempotency_key_names_one_request(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    mine = bearer(tenant.api_key)
    # ar is ignored when w and h are given: the answer carries the parser's warning.
    request = jobs_pb2.SubmitJobRequest(
        prompt="a cat", params={**FAST, "ar": "1:1"}, idempotency_key="order-17"
    )
    first = await stack.jobs.SubmitJob(request, metadata=mine)
    assert not first.existing and first.warnings
    again = await stack.jobs.SubmitJob(request, metadata=mine)
    assert (again.job_id, again.existing, list(again.warnings)) == (first.job_id, True, list(first.warnings))
    # Map order is not part of the request.
    reordered = jobs_pb2.SubmitJobRequest(prompt="a cat", idempotency_key="order-17")
    for name in ("ar", "h", "w", "steps"):
        reordered.params[name] = request.params[name]
    assert (await stack.jobs.SubmitJob(reordered, metadata=mine)).job_id == first.job_id
    # Another body under the same key: refused, naming the key and its job.
    changed = jobs_pb2.SubmitJobRequest(
        prompt="a dog", params=dict(request.params), idempotency_key="order-17"
    )
    error = await rpc_error(stack.jobs.SubmitJob(changed, metadata=mine))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    [(field, description)] = field_violations(error)
    assert field == "idempotency_key" and "'order-17'" in description and first.job_id in description
    assert error.details().count("different request") == 1
    info = reason_of(error)
    assert (info.reason, dict(info.metadata)) == (
        "IDEMPOTENCY_KEY_REUSED",
        {"idempotencyKey": "order-17", "jobId": first.job_id},
    )
    # Two different bodies racing for a fresh key: one job, one refusal.
    racing = [
        jobs_pb2.SubmitJobRequest(prompt=prompt, params=FAST, idempotency_key="order-18")
        for prompt in ("a fox", "a cow")
    ]
    results = await asyncio.gather(
        *(stack.jobs.SubmitJob(r, metadata=mine) for r in racing), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert len(accepted) == 1 and not accepted[0].existing, results
    assert len(refused) == 1 and refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=mine)
    assert sorted(j.job_id for j in listed.jobs) == sorted([first.job_id, accepted[0].job_id])
    for job in listed.jobs:
        assert (await wait_for_job(stack, job.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
