"""Fuzzing every public rpc of the gateway (Jobs, Tunes, Admin). Every answer is OK or a client error
(INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION),
never INTERNAL, UNKNOWN or a dropped connection, and the gateway is healthy and does real work afterwards.

* Hypothesis strategies over the proto fields, then raw garbage on the wire: hypothesis runs in a worker
  thread with a blocking channel while the in-process gateway serves on the test's event loop; examples
  are derandomised (the same inputs every run) and bounded in number.
* Protobuf-aware mutation (``proto_mutation``) of valid requests, 10,000+ calls through grpc.aio at once:
  out-of-range well-known types, unknown enum numbers, huge strings and repeated fields, wrong wire
  types, odd but well-formed combinations. Every error also carries an ErrorInfo, a message that fits
  its trailer, and (INVALID_ARGUMENT) field violations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import random
import time
from collections import Counter

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    Stack,
    bearer,
    capabilities_fixture,
    register_tune,
    safetensors_bytes,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from proto_mutation import Mutator, wire_mutation

from multipass.errors import ERROR_DOMAIN, Reason
from multipass.grpc.errors import MESSAGE_BYTES, field_violations, reason_of
from multipass.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from multipass_gateway.infra.fetch import FetchError
from multipass_gateway.main import serve as serve_gateway
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(240)
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PARAMS = (
    "num_images", "negative_prompt", "seed", "steps", "cfg_scale", "scheduler", "w", "h", "ar", "controlnet",
    "controlnet_conditioning_scale", "controlnet_txt2img", "input_image_url", "mask_image_url",
    "denoising_strength", "super_resolution", "hires_fix", "inpaint_faces", "face_correct", "face_swap",
    "film_grain", "prompt_expansion", "use_lpw", "color_grading",
)  # fmt: skip
ODD_VALUES = (
    "", "-1", "0", "1", "8", "9", "50", "51", "1e309", "nan", "inf", "-inf", "0x10", "99999999999999999999",
    "true", "yes", "2048", "4096", "255", "256", "257", "euler", "pose", "http://127.0.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "gopher://example.test/", "\x00", "é" * 50,
)  # fmt: skip
ODD_TEXT = (
    "", "a cat", "BREAK", "BREAK BREAK BREAK", "a room BREAK BREAK ohwx woman <lora:1:1>",
    "<lora:999999999999999999999999:2>", "<lora:../../etc:1>", "<faceid:1:1>", "a cat --mask_prompt",
    "a cat --only_upscale", "a cat --steps 9999", "x" * 4001, "(((((((a)))))))", "[a:b:0.5]", "\u202e\u0000\ud7ff",
    "a --w 999999 --h 1", "a\nsteps=0\nnum_images=99", "ohwx woman " * 300,
)  # fmt: skip


def ids(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known + ["", "../t1.job", "a.b", "*", ">", "0" * 24, "9" * 16, "x" * 200]),
        st.text(max_size=60),
        st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
    )


texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=200))
params = st.dictionaries(
    st.one_of(st.sampled_from(PARAMS), st.text(max_size=20)),
    st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=40), st.integers(-(2**70), 2**70).map(str)),
    max_size=6,
)
timestamps = st.builds(
    timestamp_pb2.Timestamp, seconds=st.integers(-(2**40), 2**40), nanos=st.integers(0, 999_999_999)
)
#: None: the tenant's own key (most examples); else a missing, malformed or unknown one.
keys = st.sampled_from([None, None, None, "", "garbage", "Bearer mpk_0123456789abcdef_" + "x" * 43])


class Recorder:
    """The calls a thread makes; any code outside CLIENT_ERRORS fails the example (and is shrunk)."""

    def __init__(self):
        self.codes: Counter = Counter()

    def call(self, rpc: str, fn, *args, **kwargs):
        try:
            result = fn(*args, timeout=20, **kwargs)
            if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
                result = list(result)  # drain a server stream
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            result = None
            assert code in CLIENT_ERRORS, f"{rpc}: {code.name} {error.details()}"
        self.codes[(rpc, code.name)] += 1
        return result


def fuzz_fields(address: str, api_key: str, known: dict[str, list[str]], recorder: Recorder) -> None:
    """Hypothesis over the fields of every rpc (sync, in a worker thread)."""
    channel = grpc.insecure_channel(address)
    jobs, tunes = jobs_pb2_grpc.JobsStub(channel), jobs_pb2_grpc.TunesStub(channel)
    admin = admin_pb2_grpc.AdminStub(channel)
    mine = bearer(api_key)

    def auth(key):
        return mine if key is None else ([("authorization", key)] if key else [])

    @FUZZ
    @given(
        prompt=texts,
        params=params,
        input_id=ids(known["uploads"]),
        mask_id=ids(known["uploads"]),
        callback=st.one_of(st.just(""), st.sampled_from(ODD_VALUES), st.text(max_size=80)),
        idem=st.one_of(st.just(""), st.text(max_size=250)),
        key=keys,
    )
    def submit(prompt, params, input_id, mask_id, callback, idem, key):
        request = jobs_pb2.SubmitJobRequest(
            prompt=prompt,
            params=params,
            input_image_id=input_id,
            mask_image_id=mask_id,
            callback_url=callback,
            idempotency_key=idem,
        )
        recorder.call("SubmitJob", jobs.SubmitJob, request, metadata=auth(key))

    @FUZZ
    @given(job_id=ids(known["jobs"]), after=st.integers(-(2**63), 2**63 - 1), key=keys)
    def by_job(job_id, after, key):
        recorder.call("GetJob", jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(key))
        recorder.call(
            "CancelJob", jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), metadata=auth(key)
        )
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
        recorder.call("WatchJob", jobs.WatchJob, request, metadata=auth(key))
        # Last: it may delete the known job (later calls then find it gone: NOT_FOUND).
        recorder.call(
            "DeleteJob", jobs.DeleteJob, jobs_pb2.DeleteJobRequest(job_id=job_id), metadata=auth(key)
        )

    @FUZZ
    @given(
        size=st.integers(-(2**31), 2**31 - 1),
        token=st.one_of(st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.hex())),
        states=st.lists(st.integers(-5, 10), max_size=4),
        after=st.one_of(st.none(), timestamps),
        before=st.one_of(st.none(), timestamps),
        key=keys,
    )
    def listing(size, token, states, after, before, key):
        request = jobs_pb2.ListJobsRequest(page_size=size, page_token=token, states=states)
        if after is not None:
            request.created_after.CopyFrom(after)
        if before is not None:
            request.created_before.CopyFrom(before)
        recorder.call("ListJobs", jobs.ListJobs, request, metadata=auth(key))
        tunes_request = jobs_pb2.ListTunesRequest(page_size=size, page_token=token)
        recorder.call("ListTunes", tunes.ListTunes, tunes_request, metadata=auth(key))

    named_texts = st.dictionaries(st.text(max_size=70), st.text(max_size=250), max_size=4)

    @FUZZ
    @given(
        tune_id=ids(known["tunes"]),
        key=keys,
        name=st.text(max_size=120),
        class_name=st.text(max_size=40),
        characteristics=named_texts,
        paths=st.lists(
            st.sampled_from(["name", "class_name", "characteristics", "token", "file", ""]), max_size=3
        ),
    )
    def by_tune(tune_id, key, name, class_name, characteristics, paths):
        recorder.call("GetTune", tunes.GetTune, jobs_pb2.GetTuneRequest(tune_id=tune_id), metadata=auth(key))
        update = jobs_pb2.UpdateTuneRequest(
            tune_id=tune_id, name=name, class_name=class_name, characteristics=characteristics
        )
        update.update_mask.paths.extend(paths)
        recorder.call("UpdateTune", tunes.UpdateTune, update, metadata=auth(key))
        recorder.call(
            "DeleteTune", tunes.DeleteTune, jobs_pb2.DeleteTuneRequest(tune_id=tune_id), metadata=auth(key)
        )

    parts = st.lists(
        st.one_of(
            st.builds(lambda c: jobs_pb2.UploadImageRequest(chunk=c), st.binary(max_size=300)),
            st.builds(lambda n: jobs_pb2.UploadImageRequest(filename=n), st.text(max_size=40)),
            st.just(jobs_pb2.UploadImageRequest()),
            st.just(jobs_pb2.UploadImageRequest(chunk=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)),
        ),
        max_size=5,
    )

    @FUZZ
    @given(parts=parts, key=keys)
    def upload(parts, key):
        recorder.call("UploadImage", jobs.UploadImage, iter(parts), metadata=auth(key))

    @FUZZ
    @given(image_id=ids(known["uploads"]), key=keys)
    def delete_upload(image_id, key):
        request = jobs_pb2.DeleteUploadRequest(image_id=image_id)
        recorder.call("DeleteUpload", jobs.DeleteUpload, request, metadata=auth(key))

    @FUZZ
    @given(key=keys)
    def callback_key(key):
        recorder.call(
            "GetCallbackKey", jobs.GetCallbackKey, jobs_pb2.GetCallbackKeyRequest(), metadata=auth(key)
        )

    metadata = st.builds(
        jobs_pb2.TuneMetadata,
        name=st.text(max_size=40),
        token=st.one_of(st.sampled_from(["ohwx", "", "OHWX", "a" * 40]), st.text(max_size=20)),
        class_name=st.one_of(st.sampled_from(["woman", "man", "", "dog!"]), st.text(max_size=20)),
        base_family=st.one_of(st.sampled_from(["sd15", "sdxl", "flux", ""]), st.text(max_size=10)),
        kind=st.one_of(st.sampled_from(["lora", "checkpoint", "pickle", ""]), st.text(max_size=10)),
        url=st.one_of(st.just(""), st.sampled_from(ODD_VALUES), st.text(max_size=60)),
        sha256=st.one_of(st.just(""), st.from_regex(r"[0-9a-f]{64}", fullmatch=True), st.text(max_size=70)),
        reference_image_ids=st.lists(ids(known["uploads"]), max_size=3),
        characteristics=named_texts,
        reference_image_urls=st.lists(st.sampled_from(ODD_VALUES), max_size=2),
    )
    tune_parts = st.lists(
        st.one_of(
            metadata.map(lambda m: jobs_pb2.RegisterTuneRequest(metadata=m)),
            st.binary(max_size=200).map(lambda c: jobs_pb2.RegisterTuneRequest(chunk=c)),
            st.just(jobs_pb2.RegisterTuneRequest(chunk=b"\xff" * 8 + b"{}")),
        ),
        max_size=4,
    )

    @FUZZ
    @given(parts=tune_parts, key=keys)
    def register(parts, key):
        recorder.call("RegisterTune", tunes.RegisterTune, iter(parts), metadata=auth(key))

    @FUZZ
    @given(
        name=st.text(max_size=120),
        tenant=ids(known["tenants"]),
        key_id=ids([]),
        token=st.sampled_from([None, "", "wrong", ADMIN_TOKEN]),
    )
    def administration(name, tenant, key_id, token):
        meta = [] if token is None else [("x-multipass-admin-token", token)]
        recorder.call(
            "CreateTenant", admin.CreateTenant, admin_pb2.CreateTenantRequest(name=name), metadata=meta
        )
        recorder.call("CreateKey", admin.CreateKey, admin_pb2.CreateKeyRequest(tenant=tenant), metadata=meta)
        recorder.call("ListKeys", admin.ListKeys, admin_pb2.ListKeysRequest(tenant=tenant), metadata=meta)
        recorder.call(
            "ListTenants",
            admin.ListTenants,
            admin_pb2.ListTenantsRequest(page_size=len(name) - 10, page_token=name),
            metadata=meta,
        )
        if token != ADMIN_TOKEN:  # never revoke the keys, nor remove the tenant, the other examples use
            recorder.call(
                "RevokeKey", admin.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=key_id), metadata=meta
            )
            recorder.call(
                "DeleteTenant",
                admin.DeleteTenant,
                admin_pb2.DeleteTenantRequest(tenant=tenant),
                metadata=meta,
            )
            recorder.call(
                "SetTenantLimits",
                admin.SetTenantLimits,
                admin_pb2.SetTenantLimitsRequest(tenant=tenant, limits=admin_pb2.TenantLimits(max_uploads=1)),
                metadata=meta,
            )

    try:
        for run in (
            submit,
            by_job,
            listing,
            by_tune,
            upload,
            delete_upload,
            callback_key,
            register,
            administration,
        ):
            run()
    finally:
        channel.close()


#: Every public method with its streaming kind, for raw bytes on the wire.
METHODS = {
    "/multipass.v1.Jobs/SubmitJob": "unary_unary",
    "/multipass.v1.Jobs/GetJob": "unary_unary",
    "/multipass.v1.Jobs/WatchJob": "unary_stream",
    "/multipass.v1.Jobs/CancelJob": "unary_unary",
    "/multipass.v1.Jobs/DeleteJob": "unary_unary",
    "/multipass.v1.Jobs/ListJobs": "unary_unary",
    "/multipass.v1.Jobs/UploadImage": "stream_unary",
    "/multipass.v1.Jobs/DeleteUpload": "unary_unary",
    "/multipass.v1.Jobs/GetCallbackKey": "unary_unary",
    "/multipass.v1.Tunes/RegisterTune": "stream_unary",
    "/multipass.v1.Tunes/GetTune": "unary_unary",
    "/multipass.v1.Tunes/ListTunes": "unary_unary",
    "/multipass.v1.Tunes/DeleteTune": "unary_unary",
    "/multipass.v1.Tunes/UpdateTune": "unary_unary",
    "/multipass.v1.Admin/CreateTenant": "unary_unary",
    "/multipass.v1.Admin/CreateKey": "unary_unary",
    "/multipass.v1.Admin/RevokeKey": "unary_unary",
    "/multipass.v1.Admin/ListTenants": "unary_unary",
    "/multipass.v1.Admin/ListKeys": "unary_unary",
    "/multipass.v1.Admin/DeleteTenant": "unary_unary",
    "/multipass.v1.Admin/SetTenantLimits": "unary_unary",
}


def fuzz_wire(address: str, api_key: str, recorder: Recorder) -> None:
    """Raw bytes as request messages (identity serializers): undecodable ones are INVALID_ARGUMENT."""
    channel = grpc.insecure_channel(address)
    garbage = st.one_of(
        st.binary(max_size=400),
        st.sampled_from([b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc", b"\x08" + b"\xff" * 11]),
    )

    @settings(FUZZ, max_examples=25)
    @given(data=garbage, extra=st.lists(st.binary(max_size=100), max_size=3), admin=st.booleans())
    def each(data, extra, admin):
        meta = [("x-multipass-admin-token", ADMIN_TOKEN)] if admin else bearer(api_key)
        for method, kind in METHODS.items():
            if method.rsplit("/", 1)[1] in ("RevokeKey", *TENANT_CHANGES) and admin:
                continue  # random bytes may decode into one of our real key or tenant ids
            stub = getattr(channel, kind)(method, request_serializer=None, response_deserializer=None)
            payload = iter([data, *extra]) if kind.startswith("stream") else data
            recorder.call(method.rsplit("/", 1)[1] + " (raw)", stub, payload, metadata=meta)

    try:
        each()
    finally:
        channel.close()


async def no_dns(host: str, port: int):
    raise FetchError(f"host {host} does not resolve (no DNS in this test)", permanent=True)


async def test_every_public_rpc_answers_fuzz_with_client_errors_and_stays_healthy(stack):
    stack.gateway = await serve_gateway(
        stack.settings(limits=Limits(fetch_timeout_seconds=0.5, max_image_bytes=64 * 1024)), resolver=no_dns
    )
    stack.channel = grpc.aio.insecure_channel(stack.gateway.address)
    tenant = await stack.tenant("fuzz")
    other = await stack.tenant("other")
    job = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(tenant.api_key),
    )
    tune = await register_tune(stack, tenant.api_key)
    known = {
        "jobs": [job.job_id],
        "tunes": [tune.tune_id],
        "uploads": ["0123456789abcdef01234567"],
        "tenants": [tenant.tenant, other.tenant],
    }
    recorder = Recorder()
    await asyncio.to_thread(fuzz_fields, stack.gateway.address, tenant.api_key, known, recorder)
    await asyncio.to_thread(fuzz_wire, stack.gateway.address, tenant.api_key, recorder)

    by_rpc = Counter(rpc for rpc, _ in recorder.codes.elements())
    assert len(by_rpc) == 42, sorted(by_rpc)  # 21 rpcs through stubs, the same 21 raw
    assert recorder.codes[("SubmitJob (raw)", "INVALID_ARGUMENT")] > 0
    assert recorder.codes[("SubmitJob", "INVALID_ARGUMENT")] > 0
    # Healthy afterwards, and still doing real work for both tenants.
    health = await health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # (The fuzz may have deleted the known job: DeleteJob is among the calls; a new one shows the work goes on.)
    mine = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(tenant.api_key),
    )
    assert (await wait_for_job(stack, mine.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    after = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a dog", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(other.api_key),
    )
    assert (await wait_for_job(stack, after.job_id, other.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    print(
        f"RELIABILITY fuzz calls={sum(recorder.codes.values())} codes={dict(Counter(c for _, c in recorder.codes.elements()))}"
    )


# --- protobuf-aware mutation, many calls at once through grpc.aio -------------------------------------------------

#: Calls of the mutation fuzz; its seed (MULTIPASS_FUZZ_SEED) reproduces a run.
MUTATION_CALLS = 10_400
MUTATION_CONCURRENCY = 24
MUTATION_SEED = int(os.environ.get("MULTIPASS_FUZZ_SEED", "1515"))
#: rpc -> (service, request type, kind)
RPCS = {
    "SubmitJob": ("multipass.v1.Jobs", jobs_pb2.SubmitJobRequest, "unary_unary"),
    "GetJob": ("multipass.v1.Jobs", jobs_pb2.GetJobRequest, "unary_unary"),
    "WatchJob": ("multipass.v1.Jobs", jobs_pb2.WatchJobRequest, "unary_stream"),
    "CancelJob": ("multipass.v1.Jobs", jobs_pb2.CancelJobRequest, "unary_unary"),
    "DeleteJob": ("multipass.v1.Jobs", jobs_pb2.DeleteJobRequest, "unary_unary"),
    "ListJobs": ("multipass.v1.Jobs", jobs_pb2.ListJobsRequest, "unary_unary"),
    "UploadImage": ("multipass.v1.Jobs", jobs_pb2.UploadImageRequest, "stream_unary"),
    "DeleteUpload": ("multipass.v1.Jobs", jobs_pb2.DeleteUploadRequest, "unary_unary"),
    "GetCallbackKey": ("multipass.v1.Jobs", jobs_pb2.GetCallbackKeyRequest, "unary_unary"),
    "RegisterTune": ("multipass.v1.Tunes", jobs_pb2.RegisterTuneRequest, "stream_unary"),
    "GetTune": ("multipass.v1.Tunes", jobs_pb2.GetTuneRequest, "unary_unary"),
    "ListTunes": ("multipass.v1.Tunes", jobs_pb2.ListTunesRequest, "unary_unary"),
    "DeleteTune": ("multipass.v1.Tunes", jobs_pb2.DeleteTuneRequest, "unary_unary"),
    "CreateTenant": ("multipass.v1.Admin", admin_pb2.CreateTenantRequest, "unary_unary"),
    "CreateKey": ("multipass.v1.Admin", admin_pb2.CreateKeyRequest, "unary_unary"),
    "RevokeKey": ("multipass.v1.Admin", admin_pb2.RevokeKeyRequest, "unary_unary"),
    "ListTenants": ("multipass.v1.Admin", admin_pb2.ListTenantsRequest, "unary_unary"),
    "ListKeys": ("multipass.v1.Admin", admin_pb2.ListKeysRequest, "unary_unary"),
    "DeleteTenant": ("multipass.v1.Admin", admin_pb2.DeleteTenantRequest, "unary_unary"),
    "SetTenantLimits": ("multipass.v1.Admin", admin_pb2.SetTenantLimitsRequest, "unary_unary"),
}


#: Admin rpcs that change the tenant the other calls use: never sent with the admin token here.
TENANT_CHANGES = ("DeleteTenant", "SetTenantLimits")


def png_bytes(side: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 20, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def timestamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@dataclasses.dataclass
class Known:
    """Real ids the mutations start from, so that they reach past the id checks into the rpcs' logic."""

    job_id: str
    tune_id: str
    upload_id: str
    tenant: str
    api_key: str

    def strings(self) -> tuple[str, ...]:
        return (self.job_id, self.tune_id, self.upload_id, self.tenant, "a cat", "steps", "w", "ohwx", "sd15")


def seeds(known: Known) -> dict[str, list]:
    """Valid requests (a stream's: lists of messages) per rpc."""
    now = int(time.time())
    fast = {"steps": "1", "w": "256", "h": "256"}
    return {
        "SubmitJob": [
            jobs_pb2.SubmitJobRequest(prompt="a cat", params=fast),
            jobs_pb2.SubmitJobRequest(prompt="a cat", params=fast, idempotency_key="fuzz-17"),
            jobs_pb2.SubmitJobRequest(
                prompt="BREAK BREAK ohwx woman", params=fast, input_image_id=known.upload_id
            ),
            jobs_pb2.SubmitJobRequest(
                prompt=f"a room BREAK BREAK ohwx woman <lora:{known.tune_id}:1>", params=fast
            ),
        ],
        "GetJob": [jobs_pb2.GetJobRequest(job_id=known.job_id)],
        "WatchJob": [jobs_pb2.WatchJobRequest(job_id=known.job_id, after_sequence=2)],
        "CancelJob": [jobs_pb2.CancelJobRequest(job_id=known.job_id)],
        "DeleteJob": [jobs_pb2.DeleteJobRequest(job_id="0" * 24)],
        "ListJobs": [
            jobs_pb2.ListJobsRequest(
                page_size=5,
                states=[jobs_pb2.JOB_STATE_SUCCEEDED],
                created_after=timestamp(now - 3600),
                created_before=timestamp(now + 3600),
            )
        ],
        "UploadImage": [
            [jobs_pb2.UploadImageRequest(filename="a.png"), jobs_pb2.UploadImageRequest(chunk=png_bytes())]
        ],
        "DeleteUpload": [jobs_pb2.DeleteUploadRequest(image_id="0" * 24)],
        "GetCallbackKey": [jobs_pb2.GetCallbackKeyRequest()],
        "RegisterTune": [
            [
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family="sd15")
                ),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ]
        ],
        "GetTune": [jobs_pb2.GetTuneRequest(tune_id=known.tune_id)],
        "ListTunes": [jobs_pb2.ListTunesRequest(page_size=5)],
        "DeleteTune": [jobs_pb2.DeleteTuneRequest(tune_id="1" * 16)],
        "CreateTenant": [admin_pb2.CreateTenantRequest(name="fuzzed tenant")],
        "CreateKey": [admin_pb2.CreateKeyRequest(tenant=known.tenant)],
        "RevokeKey": [admin_pb2.RevokeKeyRequest(key_id="0123456789abcdef")],
        "ListTenants": [admin_pb2.ListTenantsRequest(page_size=2)],
        "ListKeys": [admin_pb2.ListKeysRequest(tenant=known.tenant)],
        "DeleteTenant": [admin_pb2.DeleteTenantRequest(tenant=known.tenant)],
        "SetTenantLimits": [
            admin_pb2.SetTenantLimitsRequest(
                tenant=known.tenant, limits=admin_pb2.TenantLimits(max_uploads=3)
            )
        ],
    }


def odd_requests(known: Known) -> dict[str, list]:
    """Valid-looking requests whose combination is odd: empty streams, reversed or extreme bounds, both
    ways of giving one input, a repeated cancel, the ends of every range."""
    now = int(time.time())
    fast = {"steps": "1", "w": "256", "h": "256"}
    return {
        "SubmitJob": [
            jobs_pb2.SubmitJobRequest(),
            jobs_pb2.SubmitJobRequest(
                prompt="a cat",
                params={**fast, "input_image_url": "http://images.test/x.png"},
                input_image_id=known.upload_id,
                mask_image_id=known.upload_id,
            ),
            jobs_pb2.SubmitJobRequest(prompt="a cat", params={**fast, "seed": "-1", "num_images": "8"}),
            jobs_pb2.SubmitJobRequest(prompt="a cat", params=fast, idempotency_key="fuzz-17"),
        ],
        "GetJob": [jobs_pb2.GetJobRequest(job_id=known.job_id.upper()), jobs_pb2.GetJobRequest()],
        "WatchJob": [
            jobs_pb2.WatchJobRequest(job_id=known.job_id, after_sequence=2**63 - 1),
            jobs_pb2.WatchJobRequest(job_id=known.job_id, after_sequence=-(2**63)),
            jobs_pb2.WatchJobRequest(job_id=known.job_id),
        ],
        "CancelJob": [jobs_pb2.CancelJobRequest(job_id=known.job_id), jobs_pb2.CancelJobRequest()],
        "DeleteJob": [jobs_pb2.DeleteJobRequest(), jobs_pb2.DeleteJobRequest(job_id="x" * 300)],
        "GetCallbackKey": [jobs_pb2.GetCallbackKeyRequest()],
        "DeleteUpload": [
            jobs_pb2.DeleteUploadRequest(),
            jobs_pb2.DeleteUploadRequest(image_id="../" * 10),
            jobs_pb2.DeleteUploadRequest(image_id=known.upload_id.upper()),
        ],
        "ListJobs": [
            jobs_pb2.ListJobsRequest(
                created_after=timestamp(now + 3600), created_before=timestamp(now - 3600)
            ),
            jobs_pb2.ListJobsRequest(
                created_after=timestamp(-62_135_596_800),
                created_before=timestamp(253_402_300_799, 999_999_999),
            ),
            jobs_pb2.ListJobsRequest(page_size=100, states=list(range(1, 7)) * 2),
            jobs_pb2.ListJobsRequest(page_size=1, page_token="YWZ0ZXI6"),
        ],
        "UploadImage": [
            [],
            [jobs_pb2.UploadImageRequest(filename="only a name")],
            [jobs_pb2.UploadImageRequest(chunk=png_bytes()), jobs_pb2.UploadImageRequest(filename="late")],
            [
                jobs_pb2.UploadImageRequest(chunk=png_bytes()[:20]),
                jobs_pb2.UploadImageRequest(chunk=png_bytes()[20:]),
            ],
        ],
        "RegisterTune": [
            [],
            [jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes())],
            [
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(
                        token="ohwx", class_name="woman", base_family="sd15", url="http://tunes.test/x"
                    )
                ),
                jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes()),
            ],
            [
                jobs_pb2.RegisterTuneRequest(
                    metadata=jobs_pb2.TuneMetadata(
                        token="ohwx",
                        class_name="woman",
                        base_family="sd15",
                        reference_image_ids=[known.upload_id] * 11,
                    )
                ),
            ],
        ],
        "GetTune": [jobs_pb2.GetTuneRequest(tune_id="0" * 24), jobs_pb2.GetTuneRequest(tune_id="0" * 25)],
        "ListTunes": [jobs_pb2.ListTunesRequest(page_size=100, page_token="YWZ0ZXI6OQ==")],
        "DeleteTune": [jobs_pb2.DeleteTuneRequest(), jobs_pb2.DeleteTuneRequest(tune_id="9" * 24)],
        "CreateTenant": [
            admin_pb2.CreateTenantRequest(name=" " * 5),
            admin_pb2.CreateTenantRequest(name="é" * 100),
        ],
        "CreateKey": [admin_pb2.CreateKeyRequest(tenant="t" + "0" * 16), admin_pb2.CreateKeyRequest()],
        "RevokeKey": [admin_pb2.RevokeKeyRequest(), admin_pb2.RevokeKeyRequest(key_id="F" * 16)],
        "ListTenants": [
            admin_pb2.ListTenantsRequest(
                page_size=1000, page_token="YWZ0ZXI6MWU5OTkvdDAwMDAwMDAwMDAwMDAwMDA="
            ),
            admin_pb2.ListTenantsRequest(page_size=1001),
        ],
        "ListKeys": [admin_pb2.ListKeysRequest(), admin_pb2.ListKeysRequest(tenant="T" + "0" * 16)],
        "DeleteTenant": [
            admin_pb2.DeleteTenantRequest(),
            admin_pb2.DeleteTenantRequest(tenant="t" + "0" * 16),
        ],
        "SetTenantLimits": [
            admin_pb2.SetTenantLimitsRequest(),
            admin_pb2.SetTenantLimitsRequest(
                tenant="t" + "0" * 16, limits=admin_pb2.TenantLimits(max_pending_passes=2**31 - 1)
            ),
        ],
    }


@dataclasses.dataclass
class Plan:
    """One call: the rpc, how its request was made, the request (messages or raw bytes) and the metadata."""

    rpc: str
    category: str
    payload: object
    metadata: list[tuple[str, str]]
    raw: bool = False


def planned_calls(known: Known, count: int, seed: int) -> list[Plan]:
    rng = random.Random(seed)
    mutator = Mutator(rng, known.strings())
    valid, odd = seeds(known), odd_requests(known)
    user, admin = bearer(known.api_key), [("x-multipass-admin-token", ADMIN_TOKEN)]
    stray = [
        [],
        [("authorization", known.api_key)],  # the key without "Bearer "
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer mpk_0123456789abcdef_" + "x" * 43)],
        [("authorization", f"bearer {known.api_key}")],
        [("x-multipass-admin-token", "wrong")],
    ]
    plans = []
    names = list(RPCS)
    for index in range(count):
        rpc = names[index % len(names)]
        _, request_type, kind = RPCS[rpc]
        # DeleteTenant and SetTenantLimits go with the tenant's own key: with the admin token a mutation could
        # remove or throttle the tenant every other call uses (their admin paths: test_gateway_storage.py).
        own = admin if RPCS[rpc][0] == "multipass.v1.Admin" and rpc not in TENANT_CHANGES else user
        metadata = own if rng.random() < 0.85 else rng.choice(stray)
        roll = rng.random()
        seed_request = rng.choice(valid[rpc])
        streaming = kind == "stream_unary"
        if roll < 0.2:  # the wire
            messages = seed_request if streaming else [seed_request]
            encoded = [m.SerializeToString() for m in messages] or [b""]
            position = rng.randrange(len(encoded))
            encoded[position] = wire_mutation(rng, request_type.DESCRIPTOR, encoded[position])
            payload = encoded if streaming else encoded[0]
            plans.append(Plan(rpc, "wire", payload, metadata, raw=True))
        elif roll < 0.32:  # odd but well-formed
            plans.append(Plan(rpc, "odd", rng.choice(odd[rpc]), metadata))
        elif streaming:  # mutate some messages of the stream, add or drop some
            messages = [mutator.mutate(m) if rng.random() < 0.7 else m for m in seed_request]
            if rng.random() < 0.3:
                messages.insert(rng.randrange(len(messages) + 1), mutator.fill(request_type()))
            if rng.random() < 0.1 and sum(m.ByteSize() for m in messages) < 20_000:
                messages = messages * rng.choice((2, 40))
            plans.append(Plan(rpc, "fields", messages, metadata))
        else:
            plans.append(Plan(rpc, "fields", mutator.mutate(seed_request), metadata))
    return plans


@dataclasses.dataclass
class Outcome:
    codes: Counter = dataclasses.field(default_factory=Counter)
    categories: Counter = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)


def judge(outcome: Outcome, plan: Plan, error: grpc.aio.AioRpcError | None) -> None:
    """Record the call's code; note anything a client could not act on."""
    code = grpc.StatusCode.OK if error is None else error.code()
    outcome.codes[(plan.rpc, code.name)] += 1
    outcome.categories[plan.category] += 1
    if error is None:
        return
    where = f"{plan.rpc} ({plan.category}) -> {code.name} {error.details()!r:.300}"
    if code not in CLIENT_ERRORS:
        outcome.problems.append(f"{where}: not a client error")
        return
    if len((error.details() or "").encode()) > MESSAGE_BYTES:
        outcome.problems.append(f"{where}: message longer than {MESSAGE_BYTES} bytes")
    info = reason_of(error)
    if info is None or info.domain != ERROR_DOMAIN or info.reason not in Reason.__members__:
        outcome.problems.append(f"{where}: no ErrorInfo of {ERROR_DOMAIN} with a known reason ({info})")
    if code == grpc.StatusCode.INVALID_ARGUMENT and not field_violations(error):
        outcome.problems.append(f"{where}: INVALID_ARGUMENT without field violations")


async def call_once(channel: grpc.aio.Channel, plan: Plan) -> grpc.aio.AioRpcError | None:
    service, request_type, kind = RPCS[plan.rpc]
    method = f"/{service}/{plan.rpc}"
    serializer = None if plan.raw else request_type.SerializeToString
    # Responses are not looked at: they stay bytes.
    stub = getattr(channel, kind)(method, request_serializer=serializer, response_deserializer=None)
    try:
        if kind == "unary_unary":
            await stub(plan.payload, metadata=plan.metadata, timeout=60)
        elif kind == "unary_stream":
            async for _ in stub(plan.payload, metadata=plan.metadata, timeout=60):
                pass
        else:  # write one message at a time, like a client that stops once the server answered
            call = stub(metadata=plan.metadata, timeout=60)
            try:
                for message in plan.payload:
                    await call.write(message)
                await call.done_writing()
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                pass  # the server ended the call early; awaiting it gives its status
            await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


@pytest.mark.slow
async def test_protobuf_aware_mutations_of_every_public_rpc_get_actionable_client_errors(stack, caplog):
    """10,000+ calls of mutated requests at once: every answer is OK or a client error with an ErrorInfo
    (and field violations for INVALID_ARGUMENT) and a short message; the gateway stays healthy."""
    limits = Limits(
        fetch_timeout_seconds=0.5,
        max_image_bytes=64 * 1024,
        tenant_max_pending_passes=6,
        global_max_pending_passes=40,
        retry_after_seconds=1.0,
    )
    stack.gateway = await serve_gateway(stack.settings(limits=limits), resolver=no_dns)
    stack.channel = grpc.aio.insecure_channel(stack.gateway.address)
    tenant = await stack.tenant("mutations")
    job = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(tenant.api_key),
    )
    assert (await wait_for_job(stack, job.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    tune = await register_tune(stack, tenant.api_key)

    async def parts():
        yield jobs_pb2.UploadImageRequest(chunk=png_bytes(64))

    upload = await stack.jobs.UploadImage(parts(), metadata=bearer(tenant.api_key))
    known = Known(job.job_id, tune.tune_id, upload.image_id, tenant.tenant, tenant.api_key)
    plans = planned_calls(known, MUTATION_CALLS, MUTATION_SEED)
    outcome = Outcome()
    queue = iter(plans)
    started = time.monotonic()

    async def worker() -> None:
        for plan in queue:
            judge(outcome, plan, await call_once(stack.channel, plan))

    with caplog.at_level("ERROR", logger="multipass.grpc.errors"):
        await asyncio.gather(*(worker() for _ in range(MUTATION_CONCURRENCY)))
    elapsed = time.monotonic() - started

    calls = sum(outcome.codes.values())
    print(
        f"RELIABILITY mutation fuzz seed={MUTATION_SEED} calls={calls} seconds={elapsed:.1f} "
        f"categories={dict(outcome.categories)} codes={dict(Counter(c for _, c in outcome.codes.elements()))}"
    )
    assert calls == MUTATION_CALLS >= 10_000
    assert not outcome.problems, f"{len(outcome.problems)} bad answers, e.g.:\n" + "\n".join(
        outcome.problems[:20]
    )
    assert not [r for r in caplog.records if r.name == "multipass.grpc.errors"], "errors were logged"
    assert {rpc for rpc, _ in outcome.codes} == set(RPCS)
    assert min(outcome.categories[c] for c in ("fields", "wire", "odd")) > 500
    for rpc in ("SubmitJob", "ListJobs", "RegisterTune", "UploadImage", "CreateKey"):
        assert outcome.codes[(rpc, "INVALID_ARGUMENT")] > 0, rpc
    assert outcome.codes[("ListJobs", "OK")] > 0 and outcome.codes[("WatchJob", "OK")] > 0
    # Healthy afterwards, and still doing real work.
    health = await health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    other = await stack.tenant("after the storm")
    after = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a dog", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(other.api_key),
    )
    assert (await wait_for_job(stack, after.job_id, other.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
