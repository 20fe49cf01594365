"""Jobs through the gateway: a fake worker answers passes from JetStream; the real parser and
segmentation services run in-process; job state lives in NATS KV; images in S3."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    MODEL,
    Stack,
    bearer,
    capabilities_fixture,
    register_tune,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from PIL import Image
from prometheus_client import REGISTRY

from multipass import names
from multipass.grpc.errors import field_violations, reason_of
from multipass.images import sha256_hex
from multipass.v1 import common_pb2, events_pb2, jobs_pb2, prompt_pb2


async def watch(stack: Stack, job_id: str, key: str, after: int = 0) -> list[jobs_pb2.JobEvent]:
    call = stack.jobs.WatchJob(
        jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after), metadata=bearer(key)
    )
    return [event async for event in call]


def layout_calls() -> float:
    return REGISTRY.get_sample_value("multipass_segment_duration_seconds_count", {"kind": "layout"}) or 0.0


async def test_jobs_of_one_size_share_their_default_layout_until_the_tenant_goes(stack):
    """The pose image of a default layout is laid out and stored once per size and person count, reused by
    the tenant's later jobs (no Layout call), kept when one job is deleted, separate per tenant."""
    await stack.start_gateway()
    first_tenant, other_tenant = await stack.tenant(), await stack.tenant()
    prompt = "a park BREAK BREAK ohwx woman BREAK ohwx man\nsteps=2\nw=256\nh=256"

    async def base_control_image(key: str, text: str = prompt) -> common_pb2.ImageRef:
        submitted = await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt=text), metadata=bearer(key))
        assert (await wait_for_job(stack, submitted.job_id, key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
        base = next(r for r in stack.worker.seen if r.job_id == submitted.job_id and r.pass_name == "base")
        return submitted.job_id, base.spec.control_image

    calls = layout_calls()
    first_job, first = await base_control_image(first_tenant.api_key)
    second_job, second = await base_control_image(first_tenant.api_key)
    assert second == first and layout_calls() == calls + 1  # one Layout call for both jobs
    await stack.jobs.DeleteJob(
        jobs_pb2.DeleteJobRequest(job_id=first_job), metadata=bearer(first_tenant.api_key)
    )
    assert await stack.store.exists(first.bucket, first.key)  # the other job still uses it
    _, wider = await base_control_image(first_tenant.api_key, prompt.replace("w=256", "w=320"))
    assert wider.key != first.key and layout_calls() == calls + 2
    _, theirs = await base_control_image(other_tenant.api_key)
    assert theirs.key.startswith(f"jobs/{other_tenant.tenant}/layouts/") and theirs.sha256 == first.sha256


async def test_two_person_job_succeeds_with_every_pass_recorded(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    tune = await register_tune(stack, tenant.api_key)
    prompt = (
        "a ballroom\nBREAK elegant\nBREAK ohwx woman in red <lora:"
        + tune.tune_id
        + ":0.8>\nBREAK ohwx man in blue\nnum_images=2\nsteps=6\nw=256\nh=256\nseed=41\nsuper_resolution=true\ninpaint_faces=true"
    )
    submitted_before = REGISTRY.get_sample_value("multipass_jobs_submitted_total") or 0.0

    def image_copies(outcome: str) -> float:
        return REGISTRY.get_sample_value("multipass_segment_image_copies_total", {"outcome": outcome}) or 0.0

    hits_before, misses_before = image_copies("hit"), image_copies("miss")
    finished_before = (
        REGISTRY.get_sample_value("multipass_jobs_finished_total", {"state": "succeeded"}) or 0.0
    )
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt=prompt), metadata=bearer(tenant.api_key)
    )
    assert submitted.job_id and not submitted.existing

    events = await watch(stack, submitted.job_id, tenant.api_key)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].WhichOneof("event") == "accepted" and events[0].accepted.num_images == 2
    assert events[-1].finished.state == jobs_pb2.JOB_STATE_SUCCEEDED
    progress = [e.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(e.WhichOneof("event") == "step_progress" for e in events)
    completed = {
        (e.pass_completed.image_index, e.pass_completed.pass_name)
        for e in events
        if e.WhichOneof("event") == "pass_completed"
    }

    job = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
    )
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.progress == 1.0
    assert job.parsed.params.seed == 41 and [image.seed for image in job.images] == [41, 42]
    assert job.last_sequence == events[-1].sequence
    # The stream's last event carries the ended job, as GetJob returns it (presigned URLs aside).
    ended = events[-1].finished.job
    assert (
        ended.job_id == job.job_id and ended.state == job.state and ended.last_sequence == job.last_sequence
    )
    assert [i.final.key for i in ended.images] == [i.final.key for i in job.images]
    assert all(i.url.startswith("http") and i.final.key in i.url for i in ended.images)
    # Every pass GetJob lists, prepare included, was completed in the events.
    assert completed == {(image.index, p.name) for image in job.images for p in image.passes}
    for image in job.images:
        assert [p.name for p in image.passes] == [
            "prepare",
            "base",
            "segment",
            "person-0",
            "person-1",
            "faces",
            "upscale",
        ]
        assert all(p.status == jobs_pb2.PASS_STATUS_COMPLETED for p in image.passes)
        for state in image.passes[1:]:
            # Every pass but segment (whose result is its masks, below) has an output image.
            assert bool(state.output.key) == (state.name != "segment"), state.name
            if state.output.key:
                assert await stack.store.exists(state.output.bucket, state.output.key)
            assert state.finished_at.ToDatetime() >= state.started_at.ToDatetime()
        assert (
            image.passes[1].output.key
            == f"jobs/{_tenant_of(job, image)}/{job.job_id}/image-{image.index}/base.png"
        )
        assert image.final.key == image.passes[-1].output.key
        assert image.url.startswith("http") and image.final.key in image.url
        assert set(image.masks) == {"person-0", "person-1"}
        assert image.masks["person-1"].key.endswith(f"image-{image.index}/mask-person-1.png")
    assert [p.prompt for p in job.persons] == ["ohwx woman in red, elegant", "ohwx man in blue, elegant"]
    assert all(p.slot_box.x1 > p.slot_box.x0 for p in job.persons)
    assert set(job.persons[0].masks) == {0, 1}
    # The worker saw each person's own LoRA and tune file only in that person's pass.
    person0 = [r for r in stack.worker.seen if r.pass_name == "person-0"]
    assert {ref.tune_id for r in person0 for ref in r.spec.loras} == {tune.tune_id}
    assert all(r.spec.tune_files[tune.tune_id].key == tune.file.key for r in person0)
    assert not any(r.spec.loras for r in stack.worker.seen if r.pass_name in ("base", "person-1"))
    # Passes were published with Nats-Msg-Id job:image:pass:attempt and the base pass was pose-conditioned.
    base = next(r for r in stack.worker.seen if r.pass_name == "base")
    assert base.spec.controlnet == "pose"
    pose = base.spec.control_image  # the tenant's default layout, content-addressed
    assert pose.key == f"jobs/{tenant.tenant}/layouts/{pose.sha256}.png"
    # The pose image and each person's mask rode on their requests as copies of the stored objects.
    for request in [base, *(r for r in stack.worker.seen if r.pass_name.startswith("person-"))]:
        wanted = request.spec.control_image if request.pass_name == "base" else request.spec.mask
        copies = {(c.bucket, c.key): c for c in request.copies}
        copy = copies[(wanted.bucket, wanted.key)]
        assert copy.sha256 == wanted.sha256 == sha256_hex(copy.data)
        assert copy.data == await stack.store.get_bytes(wanted.bucket, wanted.key)
    # The base output is segmented next: only its request asked for a copy of the output, which the
    # segmentation service then used instead of reading the image back from the store.
    assert [r.pass_name for r in stack.worker.seen if r.copy_output] == ["base"]
    assert image_copies("hit") == hits_before + 2 and image_copies("miss") == misses_before  # 2 images

    # Resume the stream from a sequence: only later events, ending with the same finish.
    tail = await watch(stack, submitted.job_id, tenant.api_key, after=events[-3].sequence)
    assert [e.sequence for e in tail] == [e.sequence for e in events[-2:]]
    assert await watch(stack, submitted.job_id, tenant.api_key, after=events[-1].sequence) == []

    listed = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(tenant.api_key))
    assert [j.job_id for j in listed.jobs] == [job.job_id]
    later = jobs_pb2.ListJobsRequest()
    later.created_after.FromSeconds(int(job.created_at.seconds) + 60)
    assert not (await stack.jobs.ListJobs(later, metadata=bearer(tenant.api_key))).jobs

    # Metrics of the gateway.
    assert REGISTRY.get_sample_value("multipass_jobs_submitted_total") == submitted_before + 1
    assert (
        REGISTRY.get_sample_value("multipass_jobs_finished_total", {"state": "succeeded"})
        == finished_before + 1
    )
    assert (REGISTRY.get_sample_value("multipass_job_duration_seconds_count") or 0) >= 1
    # The queue gauge follows the work queue's consumer (refreshed every 0.5 s here): drained now.
    gauge = {"consumer": "diffusion-tiny-sd15"}
    for _ in range(40):
        if REGISTRY.get_sample_value("multipass_queue_pending_passes", gauge) == 0:
            break
        await asyncio.sleep(0.1)
    assert REGISTRY.get_sample_value("multipass_queue_pending_passes", gauge) == 0

    # A redelivered (late, duplicate) completion of a finished pass changes nothing.
    late = events_pb2.PassEvent(
        job_id=job.job_id, tenant=_tenant_of(job, job.images[0]), image_index=0, pass_name="base", attempt=1
    )
    late.completed.result.output.CopyFrom(job.images[0].passes[1].output)
    await stack.bus.publish(
        names.event_subject(job.job_id, "completed"),
        late,
        msg_id=f"{job.job_id}:0:base:1:completed:redelivered",
    )
    await asyncio.sleep(0.5)
    again = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(tenant.api_key)
    )
    assert again.last_sequence == job.last_sequence and again.updated_at == job.updated_at
    succeeded = await stack.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_FAILED]), metadata=bearer(tenant.api_key)
    )
    assert not succeeded.jobs

    # Another tenant sees neither the job nor the tune.
    other = await stack.tenant("other")
    for call in (
        stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(other.api_key)),
        stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id), metadata=bearer(other.api_key)),
        stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=bearer(other.api_key)),
        watch(stack, job.job_id, other.api_key),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(other.api_key))).jobs
    # Cancelling a finished job is a no-op that says so.
    cancelled = await stack.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(job_id=job.job_id), metadata=bearer(tenant.api_key)
    )
    assert (
        not cancelled.cancelled
        and cancelled.state == jobs_pb2.JOB_STATE_SUCCEEDED
        and "SUCCEEDED" in cancelled.message
    )


def _tenant_of(job, image) -> str:
    return image.passes[1].output.key.split("/")[1]


async def test_failed_pass_fails_the_job_naming_the_pass(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    stack.worker.fail["person-0"] = common_pb2.ErrorDetail(
        code=common_pb2.ERROR_CODE_INVALID_ARGUMENT, message="checkpoint does not fit model tiny-sd15"
    )
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a room BREAK BREAK ohwx woman", params={"steps": "3", "w": "256", "h": "256"}
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.pass_name == "person-0"
    assert job.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert "checkpoint does not fit" in job.error.message
    states = {p.name: p.status for p in job.images[0].passes}
    assert (
        states["base"] == jobs_pb2.PASS_STATUS_COMPLETED and states["person-0"] == jobs_pb2.PASS_STATUS_FAILED
    )
    events = await watch(stack, submitted.job_id, tenant.api_key)
    assert events[-2].pass_failed.pass_name == "person-0"
    assert events[-1].finished.state == jobs_pb2.JOB_STATE_FAILED


async def test_cancel_stops_queued_work_and_broadcasts(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    stack.worker.gate.clear()  # the worker takes passes but holds them
    broadcasts: list[str] = []

    async def heard(msg):
        broadcasts.append(msg.subject)

    subscription = await stack.bus.subscribe_core(names.CANCEL_ALL, heard)
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a cat", params={"num_images": "3", "steps": "2", "w": "256", "h": "256"}
        ),
        metadata=bearer(tenant.api_key),
    )
    response = await stack.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
    )
    assert response.cancelled and response.state == jobs_pb2.JOB_STATE_CANCELLED
    job = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
    )
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert all(
        p.status in (jobs_pb2.PASS_STATUS_CANCELLED, jobs_pb2.PASS_STATUS_COMPLETED)
        for image in job.images
        for p in image.passes
    )
    assert job.error.code == common_pb2.ERROR_CODE_CANCELLED
    # Only the prepare passes were done: the progress reached, not 100 %.
    weights = 3 * (1 + 2)  # prepare 1 + base 2 steps, per image
    assert job.progress == pytest.approx(3 / weights)
    for _ in range(50):
        if broadcasts:
            break
        await asyncio.sleep(0.05)
    assert broadcasts == [names.cancel_subject(submitted.job_id)]
    again = await stack.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
    )
    assert not again.cancelled and "CANCELLED" in again.message
    # Whatever the worker still finishes for the job changes nothing.
    stack.worker.gate.set()
    await asyncio.sleep(0.5)
    after = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
    )
    assert after.state == jobs_pb2.JOB_STATE_CANCELLED and after.last_sequence == job.last_sequence
    events = await watch(stack, submitted.job_id, tenant.api_key)
    assert events[-1].finished.state == jobs_pb2.JOB_STATE_CANCELLED
    assert events[-1].progress == pytest.approx(job.progress)
    await subscription.unsubscribe()


async def test_delete_removes_a_job_and_everything_it_stored(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    mine = bearer(tenant.api_key)
    params = {"steps": "2", "w": "256", "h": "256"}
    done = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params=params, idempotency_key="once"), metadata=mine
    )
    job = await wait_for_job(stack, done.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    prefix = names.job_prefix(tenant.tenant, job.job_id)
    stored = await stack.store.list_keys(names.BUCKET_JOBS, prefix)
    assert stored

    deleted = await stack.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.job_id), metadata=mine)
    assert deleted.state == jobs_pb2.JOB_STATE_SUCCEEDED and deleted.objects_deleted == len(stored)
    assert await stack.store.list_keys(names.BUCKET_JOBS, prefix) == []
    for call in (
        stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=mine),
        stack.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.job_id), metadata=mine),
        watch(stack, job.job_id, tenant.api_key),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=mine)
    assert job.job_id not in [j.job_id for j in listed.jobs]
    # Its idempotency key is free again: the same submit makes a new job.
    again = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params=params, idempotency_key="once"), metadata=mine
    )
    assert not again.existing and again.job_id != job.job_id

    # A running job is cancelled, then deleted.
    stack.worker.gate.clear()
    running = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a dog", params=params), metadata=mine
    )
    stopped = await stack.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=running.job_id), metadata=mine)
    assert stopped.state == jobs_pb2.JOB_STATE_CANCELLED
    stack.worker.gate.set()
    await asyncio.sleep(0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=running.job_id), metadata=mine)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_gateway_restart_loses_nothing(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    stack.worker.gate.clear()
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a dog BREAK BREAK ohwx man", params={"steps": "2", "w": "256", "h": "256"}
        ),
        metadata=bearer(tenant.api_key),
    )
    await stack.stop_gateway()
    stack.worker.gate.set()  # events pile up in JetStream while no gateway runs
    await asyncio.sleep(0.5)
    await stack.start_gateway()
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert [p.status for p in job.images[0].passes] == [jobs_pb2.PASS_STATUS_COMPLETED] * 4
    passes = [(r.pass_name, r.attempt) for r in stack.worker.seen]
    assert sorted(passes) == [("base", 1), ("person-0", 1)]


@pytest.mark.parametrize("capabilities", [["controlnet:pose", "pass:base"]])
async def test_missing_capability_is_refused_at_submit(stack, capabilities):
    await stack.start_gateway()
    tenant = await stack.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                prompt="a cat", params={"super_resolution": "true", "hires_fix": "true"}
            ),
            metadata=bearer(tenant.api_key),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_violations(caught.value) == [
        ("params.hires_fix", "needs 'pass:hires', which the diffusion workers do not have installed"),
        (
            "params.super_resolution",
            "needs 'pass:upscale', which the diffusion workers do not have installed",
        ),
        (
            "params.super_resolution",
            "needs 'upscaler', which the diffusion workers do not have installed; "
            "install it with `multipass models pull upscaler`",
        ),
    ]
    assert "install them with `multipass models pull upscaler`" in caught.value.details()
    info = reason_of(caught.value)
    assert info.reason == "COMPONENT_NOT_INSTALLED"
    assert dict(info.metadata) == {
        "capabilities": "pass:hires,pass:upscale,upscaler",
        "features": "upscaler",
        "fixCommand": "multipass models pull upscaler",
    }
    # Nothing was queued.
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(tenant.api_key))).jobs


@pytest.mark.parametrize(
    "capabilities",
    [["pass:base", "controlnet:composition", "controlnet:composition:an-sdxl-model"]],
)
async def test_composition_for_a_model_whose_family_lacks_the_adapter_is_refused_at_submit(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 30)).save(buffer, format="PNG")

    async def parts():
        yield jobs_pb2.UploadImageRequest(filename="layout.png")
        yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

    upload = await stack.jobs.UploadImage(parts(), metadata=bearer(tenant.api_key))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                prompt="a cat",
                params={"controlnet": "composition", "controlnet_txt2img": "true"},
                input_image_id=upload.image_id,
            ),
            metadata=bearer(tenant.api_key),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ((field, description),) = field_violations(caught.value)
    assert field == "params.controlnet" and "multipass models pull composition`" in description
    assert dict(reason_of(caught.value).metadata)["capabilities"] == f"controlnet:composition:{MODEL}"


async def test_prompt_expansion_without_an_expander_is_refused_at_submit(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", params={"prompt_expansion": "true"}),
            metadata=bearer(tenant.api_key),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_violations(caught.value) == [
        (
            "params.prompt_expansion",
            "needs 'prompt_expander', which the diffusion workers do not have installed; "
            "install it with `multipass models pull prompt-expander`",
        )
    ]
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(tenant.api_key))).jobs


@pytest.mark.parametrize("capabilities", [["controlnet:pose", "pass:base", "pass:hires", "prompt_expander"]])
async def test_prompt_expansion_is_asked_of_the_worker_on_the_base_and_hires_passes(stack, capabilities):
    await stack.start_gateway()
    tenant = await stack.tenant()
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a cat",
            params={"prompt_expansion": "true", "hires_fix": "true", "steps": "3", "w": "256", "h": "256"},
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    seen = {r.pass_name: r.spec for r in stack.worker.seen if r.job_id == submitted.job_id}
    assert sorted(seen) == ["base", "hires"]
    assert all(dict(spec.options) == {"prompt_expansion": "true"} for spec in seen.values())
    assert seen["base"].prompt == seen["hires"].prompt and seen["base"].seed == seen["hires"].seed


@pytest.mark.parametrize("served_models", [{"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}])
async def test_tunes_must_fit_the_model_their_passes_run_on(stack, served_models):
    """Mixed mode: an SDXL base model, an SD1.5 person model, on workers serving both."""
    await stack.start_gateway(base_model="tiny-sdxl", person_model="tiny-sd15")
    tenant = await stack.tenant()
    sd15 = (await register_tune(stack, tenant.api_key, family="sd15")).tune_id
    sdxl = (await register_tune(stack, tenant.api_key, family="sdxl")).tune_id
    fitting = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt=f"a room <lora:{sdxl}:1> BREAK BREAK ohwx woman <lora:{sd15}:1>", params={"steps": "3"}
        ),
        metadata=bearer(tenant.api_key),
    )
    assert fitting.job_id

    async def refused(prompt: str) -> list[tuple[str, str]]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(prompt=prompt, params={"steps": "3"}),
                metadata=bearer(tenant.api_key),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return field_violations(caught.value)

    assert await refused(f"a room <lora:{sd15}:1> BREAK BREAK ohwx woman <lora:{sdxl}:1>") == [
        (f"<lora:{sd15}:1>", f"tune {sd15} is a sd15 lora; model tiny-sdxl is sdxl"),
        (f"<lora:{sdxl}:1>", f"tune {sdxl} is a sdxl lora; model tiny-sd15 is sd15"),
    ]
    # A common tag loads on both models, so it must fit both.
    assert await refused(f"a room BREAK spring <lora:{sd15}:1> BREAK ohwx woman") == [
        (f"<lora:{sd15}:1>", f"tune {sd15} is a sd15 lora; model tiny-sdxl is sdxl")
    ]


@pytest.mark.parametrize("served_models", [{MODEL: "sd15", "tiny-sdxl": "sdxl"}])
@pytest.mark.parametrize(
    "capabilities",
    [
        ["pass:base", "pass:person", "faceid", f"faceid:{MODEL}"]
        + ["lora:film", f"lora:film:{MODEL}", "lora:grain", "lora:grain:tiny-sdxl"]
    ],
)
async def test_named_loras_are_the_workers_files_checked_at_submit(stack, served_models, capabilities):
    """``<lora:NAME:W>``: a LoRA file of the workers' model directory, for every tenant."""
    await stack.start_gateway(base_model=MODEL, person_model=MODEL)
    tenant = await stack.tenant()
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a room <lora:film:0.4> BREAK BREAK ohwx woman <lora:film:0.7>", params={"steps": "2"}
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    by_pass = {
        request.pass_name: request.spec for request in stack.worker.seen if request.job_id == submitted.job_id
    }
    assert [(r.tune_id, round(r.weight, 2)) for r in by_pass["base"].loras] == [("film", 0.4)]
    assert [(r.tune_id, round(r.weight, 2)) for r in by_pass["person-0"].loras] == [("film", 0.7)]
    assert not by_pass["person-0"].tune_files  # the worker reads its own file

    async def refused(prompt: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(prompt=prompt, params={"steps": "2"}),
                metadata=bearer(tenant.api_key),
            )
        return caught.value

    missing = await refused("a room BREAK BREAK ohwx woman <lora:flim:1>")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert field_violations(missing) == [
        (
            "<lora:flim:1>",
            "no tune or named LoRA 'flim': tune ids are digits, and the diffusion workers have no "
            "diffusion/loras/flim.safetensors (named LoRAs installed: film, grain)",
        )
    ]
    wrong_family = await refused("a room <lora:grain:1> BREAK BREAK ohwx woman <faceid:film:1>")
    assert wrong_family.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(wrong_family) == [
        ("<lora:grain:1>", f"named LoRA grain does not fit model {MODEL} (sd15)"),
        ("<faceid:film:1>", "<faceid:...> takes the id (digits) of a faceid tune; got 'film'"),
    ]


@pytest.mark.parametrize("served_models", [{"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}])
@pytest.mark.parametrize("served_native_sizes", [{"tiny-sd15": 512, "tiny-sdxl": 1024}])
async def test_a_job_without_a_size_takes_its_base_models_native_size(
    stack, served_models, served_native_sizes
):
    await stack.start_gateway(base_model="tiny-sdxl", person_model="tiny-sd15")
    tenant = await stack.tenant()

    async def size_of(params: dict[str, str]) -> tuple[int, int]:
        submitted = await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a lighthouse at dusk", params={"steps": "2", **params}),
            metadata=bearer(tenant.api_key),
        )
        job = await stack.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
        )
        return job.parsed.params.w, job.parsed.params.h

    # SDXL's 1024, not the parser's configured 256 of these tests; ar takes its short side from it.
    assert await size_of({}) == (1024, 1024)
    assert await size_of({"ar": "landscape"}) == (1536, 1024)
    assert await size_of({"w": "512", "h": "384"}) == (512, 384)


async def test_outbox_left_by_a_crashed_replica_is_published_by_the_sweeper(stack):
    """A replica that wrote a job but died before publishing its first passes loses nothing."""
    from datetime import UTC, datetime, timedelta

    from multipass_gateway.app.submission import new_job_id
    from multipass_gateway.domain import job_state, planner

    await stack.start_gateway()
    tenant = await stack.tenant()
    parsed = prompt_pb2.ParsedPrompt(base_prompt="a lake", base_effective_prompt="a lake")
    parsed.params.MergeFrom(
        prompt_pb2.Params(num_images=1, steps=2, cfg_scale=7, scheduler="euler", w=256, h=256, seed=3)
    )
    config = planner.PlannerConfig(base_model="tiny-sd15", person_model="tiny-sd15")
    plans = planner.plan_job(parsed, planner.JobInputs(seed=3, width=256, height=256), config)
    job = jobs_pb2.Job(job_id=new_job_id(), state=jobs_pb2.JOB_STATE_QUEUED, prompt="a lake", parsed=parsed)
    long_ago = datetime.now(UTC) - timedelta(minutes=1)
    job.created_at.FromDatetime(long_ago)
    image = job.images.add(index=0, seed=3)
    for planned in plans[0].passes:
        image.passes.add(name=planned.name, kind=planned.kind, status=jobs_pb2.PASS_STATUS_PENDING)
    record = events_pb2.JobRecord(job=job, tenant=tenant.tenant, plans=plans)
    job_state.commit(record, job_state.start(record, long_ago), long_ago)
    assert record.outbox_requests and record.outbox_events
    jobs_kv = await stack.bus.kv("multipass-jobs")
    await jobs_kv.put(names.active_key(tenant.tenant, job.job_id), b"1")
    await jobs_kv.create(names.job_key(tenant.tenant, job.job_id), record.SerializeToString())

    finished = await wait_for_job(stack, job.job_id, tenant.api_key)
    assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED
    events = await watch(stack, job.job_id, tenant.api_key)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].WhichOneof("event") == "accepted"
