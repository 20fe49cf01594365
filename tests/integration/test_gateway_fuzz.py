"""Fuzzing every public rpc of the gateway (Jobs, Tunes, Admin): hypothesis strategies over the proto fields,
then raw garbage on the wire. Every answer is OK or a client error (INVALID_ARGUMENT, NOT_FOUND,
PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION), never INTERNAL, UNKNOWN or
a dropped connection, and the gateway is healthy and does real work afterwards.

Hypothesis runs in a worker thread with a blocking channel while the in-process gateway serves on the
test's event loop. Examples are derandomised (the same inputs every run) and bounded in number.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    Stack,
    bearer,
    capabilities_fixture,
    register_tune,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

    @FUZZ
    @given(tune_id=ids(known["tunes"]), key=keys)
    def by_tune(tune_id, key):
        recorder.call("GetTune", tunes.GetTune, jobs_pb2.GetTuneRequest(tune_id=tune_id), metadata=auth(key))
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
        if token != ADMIN_TOKEN:  # never revoke the keys the other examples use
            recorder.call(
                "RevokeKey", admin.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=key_id), metadata=meta
            )

    try:
        for run in (submit, by_job, listing, by_tune, upload, register, administration):
            run()
    finally:
        channel.close()


#: Every public method with its streaming kind, for raw bytes on the wire.
METHODS = {
    "/multipass.v1.Jobs/SubmitJob": "unary_unary",
    "/multipass.v1.Jobs/GetJob": "unary_unary",
    "/multipass.v1.Jobs/WatchJob": "unary_stream",
    "/multipass.v1.Jobs/CancelJob": "unary_unary",
    "/multipass.v1.Jobs/ListJobs": "unary_unary",
    "/multipass.v1.Jobs/UploadImage": "stream_unary",
    "/multipass.v1.Tunes/RegisterTune": "stream_unary",
    "/multipass.v1.Tunes/GetTune": "unary_unary",
    "/multipass.v1.Tunes/ListTunes": "unary_unary",
    "/multipass.v1.Tunes/DeleteTune": "unary_unary",
    "/multipass.v1.Admin/CreateTenant": "unary_unary",
    "/multipass.v1.Admin/CreateKey": "unary_unary",
    "/multipass.v1.Admin/RevokeKey": "unary_unary",
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
            if "Revoke" in method and admin:
                continue  # random bytes may decode into one of our real key ids
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
    assert len(by_rpc) == 26, sorted(by_rpc)  # 13 rpcs through stubs, the same 13 raw
    assert recorder.codes[("SubmitJob (raw)", "INVALID_ARGUMENT")] > 0
    assert recorder.codes[("SubmitJob", "INVALID_ARGUMENT")] > 0
    # Healthy afterwards, and still doing real work for both tenants.
    health = await health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await wait_for_job(stack, job.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    after = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a dog", params={"steps": "1", "w": "256", "h": "256"}),
        metadata=bearer(other.api_key),
    )
    assert (await wait_for_job(stack, after.job_id, other.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    print(
        f"RELIABILITY fuzz calls={sum(recorder.codes.values())} codes={dict(Counter(c for _, c in recorder.codes.elements()))}"
    )
