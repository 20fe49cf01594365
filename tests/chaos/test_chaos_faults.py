"""Faults against a running cluster (see conftest): workers SIGKILLed mid-pass, nats-server restarted, the
object store cut off, the gateway restarted, a pass that can never succeed; and a run of jobs under
random worker kills. Each test proves the same two things: nothing is lost (every job reaches a
terminal state) and nothing is doubled (gap-free event sequences, each pass completed once, one
object per pass output)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import sys
import time
from collections import Counter

import grpc
import pytest
from chaos_support import MAX_DELIVER, MODELS_ROOT, TERMINAL, bearer, check_event_stream, expected_objects
from grpc_health.v1 import health_pb2, health_pb2_grpc

from multipass.grpc.internal_auth import INTERNAL_TOKEN_HEADER
from multipass.names import BUCKET_JOBS
from multipass.v1 import (
    common_pb2,
    diffusion_pb2,
    diffusion_pb2_grpc,
    events_pb2,
    jobs_pb2,
    prompt_pb2,
    prompt_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from multipass_dev.stack.health import grpc_serving
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(300)
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED


def report(name: str, **figures) -> None:
    """One line of figures per fault (docs/RELIABILITY.md quotes them); shown with ``pytest -s``."""
    print(f"RELIABILITY {name} {json.dumps(figures, sort_keys=True)}", file=sys.stderr)


class PassEvents:
    """Every pass event on NATS (core subscription): who started what, retries, completions."""

    def __init__(self):
        self.seen: list[tuple[str, events_pb2.PassEvent]] = []
        self.changed = asyncio.Event()

    async def on_message(self, msg) -> None:
        event = events_pb2.PassEvent()
        event.ParseFromString(msg.data)
        self.seen.append((msg.subject.rsplit(".", 1)[1], event))
        self.changed.set()

    def of(self, job_id: str, kind: str) -> list[events_pb2.PassEvent]:
        return [event for name, event in self.seen if name == kind and event.job_id == job_id]

    async def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (found := predicate()):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what} within {timeout} s"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return found


@pytest.fixture
async def pass_events(observer) -> PassEvents:
    events = PassEvents()
    subscription = await observer.subscribe_core("multipass.events.>", events.on_message)
    yield events
    await subscription.unsubscribe()


async def finished_cleanly(gateway, objects, tenant, job_id: str, timeout: float = 120.0) -> jobs_pb2.Job:
    """Wait for the job; check its event stream and objects; return it."""
    job = await gateway.wait(tenant.api_key, job_id, timeout)
    events = await gateway.events(tenant.api_key, job_id)
    check_event_stream(job, events)
    if job.state == SUCCEEDED:
        stored = set(await objects.list_keys(BUCKET_JOBS, f"jobs/{tenant.tenant}/{job_id}/image-"))
        assert stored == expected_objects(tenant.tenant, job), sorted(
            stored ^ expected_objects(tenant.tenant, job)
        )
    return job


# --- internal traffic ---------------------------------------------------------------------------------------


async def test_every_internal_service_refuses_calls_without_the_internal_token(cluster):
    calls = {
        "prompt-parser": lambda channel, metadata: prompt_pb2_grpc.PromptParserStub(channel).Parse(
            prompt_pb2.ParseRequest(text="a cat"), metadata=metadata, timeout=10
        ),
        "segmentation": lambda channel, metadata: segmentation_pb2_grpc.SegmentationStub(channel).Layout(
            segmentation_pb2.LayoutRequest(count=1, width=256, height=256), metadata=metadata, timeout=10
        ),
        "diffusion": lambda channel, metadata: diffusion_pb2_grpc.DiffusionStub(channel).Info(
            diffusion_pb2.InfoRequest(), metadata=metadata, timeout=10
        ),
    }
    addresses = {
        "prompt-parser": cluster.parser.grpc_address,
        "segmentation": cluster.segmentation.grpc_address,
        "diffusion": cluster.workers["w2"].grpc_address,
    }
    for name, call in calls.items():
        async with grpc.aio.insecure_channel(addresses[name]) as channel:
            for metadata in (
                (),
                ((INTERNAL_TOKEN_HEADER, "not-the-token"),),
                (("authorization", "Bearer x"),),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(channel, metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
            assert await call(channel, ((INTERNAL_TOKEN_HEADER, cluster.token),))
            # Probes stay open: health needs no token.
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING


# --- odd images reach the real worker -------------------------------------------------------------------------


def _encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


async def test_odd_images_are_normalised_and_never_crash_a_worker(cluster, gateway, objects):
    import numpy as np
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    images = {
        "cmyk jpeg": _encoded(Image.new("CMYK", (320, 256), (0, 200, 255, 10)), "JPEG"),
        "16-bit png": _encoded(Image.fromarray(np.full((256, 320), 50000, dtype=np.uint16)), "PNG"),
        "rgba png": _encoded(Image.new("RGBA", (320, 256), (200, 100, 50, 60)), "PNG"),
        "exif-rotated jpeg": _encoded(
            Image.new("RGB", (384, 256), (10, 160, 90)), "JPEG", exif=exif.tobytes()
        ),
    }
    tenant = await gateway.tenant("images")
    pids = {name: worker.pid for name, worker in cluster.workers.items()}
    submitted = {}
    for name, data in images.items():

        async def parts(data: bytes = data):
            yield jobs_pb2.UploadImageRequest(chunk=data)

        uploaded = await gateway.jobs.UploadImage(parts(), metadata=bearer(tenant.api_key))
        request = jobs_pb2.SubmitJobRequest(
            prompt="a watercolour painting", params={"steps": "4"}, input_image_id=uploaded.image_id
        )
        submitted[name] = (await gateway.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))).job_id
    for name, job_id in submitted.items():
        job = await finished_cleanly(gateway, objects, tenant, job_id)
        assert job.state == SUCCEEDED, (name, job.error.message)
    portrait = (await gateway.get(tenant.api_key, submitted["exif-rotated jpeg"])).images[0].final
    assert portrait.height > portrait.width
    assert {name: worker.pid for name, worker in cluster.workers.items()} == pids  # nobody crashed
    assert all(worker.running for worker in cluster.workers.values())


# --- a worker dies mid-pass ------------------------------------------------------------------------------------


async def test_a_worker_killed_mid_pass_loses_nothing_and_duplicates_nothing(
    cluster, gateway, pass_events, objects
):
    tenant = await gateway.tenant("kill")
    job_id = await gateway.submit(
        tenant.api_key, "a lighthouse on a cliff at dusk", steps="40", num_images="2"
    )

    def progressing():
        for event in pass_events.of(job_id, "progress"):
            if event.progress.step >= 5:
                started = [s for s in pass_events.of(job_id, "started") if s.image_index == event.image_index]
                return started[-1].started.worker, event.image_index, event.pass_name
        return None

    victim, image, pass_name = await pass_events.until(progressing, 60, "pass past step 5")
    cluster.workers[victim].kill()
    killed_at = time.monotonic()
    cluster.workers[victim].spawn()  # restarts as a supervisor would; takes ~10 s to serve again

    job = await finished_cleanly(gateway, objects, tenant, job_id)
    recovered = time.monotonic() - killed_at
    assert job.state == SUCCEEDED, job.error.message
    # The killed pass ran again, as the same attempt (JetStream redelivered it after the ack wait).
    runs = [
        s.started.worker
        for s in pass_events.of(job_id, "started")
        if (s.image_index, s.pass_name) == (image, pass_name)
    ]
    assert runs[0] == victim and len(runs) >= 2, runs
    assert all(state.attempt == 1 for img in job.images for state in img.passes), (
        "no gateway-level retry was needed"
    )
    completed = Counter((e.image_index, e.pass_name) for e in pass_events.of(job_id, "completed"))
    assert completed[(image, pass_name)] == 1
    report(
        "worker_kill_mid_pass",
        seconds_from_kill_to_job_done=round(recovered, 1),
        runs_of_killed_pass=len(runs),
    )


# --- nats-server restarts ----------------------------------------------------------------------------------------


async def test_jobs_finish_across_a_nats_server_restart(cluster, gateway, objects):
    tenant = await gateway.tenant("nats")
    jobs = [await gateway.submit(tenant.api_key, f"a harbour, boat {i}", steps="30") for i in range(4)]
    await _until_running(gateway, tenant, jobs[0])
    started = time.monotonic()
    await asyncio.to_thread(cluster.nats.restart)
    restarted = time.monotonic() - started
    unfinished = [j for j in jobs if (await gateway.get(tenant.api_key, j)).state not in TERMINAL]
    assert len(unfinished) >= 2, "the restart came too late to matter"
    finished = [await finished_cleanly(gateway, objects, tenant, job_id) for job_id in jobs]
    assert [job.state for job in finished] == [SUCCEEDED] * 4, [job.error.message for job in finished]
    report(
        "nats_restart",
        jobs=4,
        unfinished_at_restart=len(unfinished),
        succeeded=4,
        restart_seconds=round(restarted, 1),
        done_after_restart_seconds=round(time.monotonic() - started, 1),
    )


# --- the object store is unavailable -------------------------------------------------------------------------------


async def test_passes_back_off_while_the_object_store_is_down_and_resume(
    cluster, gateway, pass_events, objects
):
    tenant = await gateway.tenant("s3-blip")
    cluster.s3_proxy.cut()
    job_id = await gateway.submit(tenant.api_key, "a foggy forest path", steps="2")
    retried = await pass_events.until(
        lambda: [e for e in pass_events.of(job_id, "failed") if e.failed.retriable][1:],
        30,
        "two retriable failures",
    )
    assert retried[0].failed.error.code == common_pb2.ERROR_CODE_UNAVAILABLE
    assert "object store" in retried[0].failed.error.message
    cluster.s3_proxy.restore()  # back before the last delivery (2 s after the second failure)
    job = await finished_cleanly(gateway, objects, tenant, job_id)
    assert job.state == SUCCEEDED, job.error.message
    naks = len([e for e in pass_events.of(job_id, "failed") if e.failed.retriable])
    assert naks == MAX_DELIVER - 1
    report("s3_outage_then_back", retriable_failures=naks, outcome="SUCCEEDED")


async def test_an_object_store_outage_past_the_retry_limit_fails_the_job_unavailable(
    cluster, gateway, pass_events
):
    await gateway.stop()
    await gateway.start(limits=Limits(fetch_timeout_seconds=5.0, pass_max_attempts=1))
    tenant = await gateway.tenant("s3-down")
    cluster.s3_proxy.cut()
    started = time.monotonic()
    job_id = await gateway.submit(tenant.api_key, "a desert at noon", steps="2")
    other = await gateway.submit(tenant.api_key, "a desert at night", steps="2")
    job = await gateway.wait(tenant.api_key, job_id, 60)
    failed_after = time.monotonic() - started
    other_job = await gateway.wait(tenant.api_key, other, 60)
    cluster.s3_proxy.restore()
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == common_pb2.ERROR_CODE_UNAVAILABLE and job.error.pass_name == "base"
    assert "object store" in job.error.message
    events = await gateway.events(tenant.api_key, job_id)
    assert (
        "failed in pass base" in events[-1].finished.message and "object store" in events[-1].finished.message
    )
    deliveries = len(pass_events.of(job_id, "failed"))
    assert deliveries == MAX_DELIVER  # MAX_DELIVER - 1 retriable failures, then the final one
    assert failed_after < 40, failed_after
    assert other_job.state == jobs_pb2.JOB_STATE_FAILED
    report(
        "s3_outage_past_limit",
        deliveries=deliveries,
        seconds_to_failed=round(failed_after, 1),
        code="UNAVAILABLE",
    )


# --- the gateway restarts ----------------------------------------------------------------------------------------------


async def test_the_gateway_restarts_mid_job_and_orchestration_resumes(cluster, gateway, objects):
    tenant = await gateway.tenant("gw")
    jobs = [
        await gateway.submit(
            tenant.api_key, f"a tram in the rain {i} BREAK photo BREAK ohwx woman", steps="12", num_images="2"
        )
        for i in range(3)
    ]
    await _until_running(gateway, tenant, jobs[0])
    await gateway.stop()  # workers go on; their events wait in JetStream
    await asyncio.sleep(3.0)
    await gateway.start()
    finished = [await finished_cleanly(gateway, objects, tenant, job_id) for job_id in jobs]
    assert [job.state for job in finished] == [SUCCEEDED] * 3, [job.error.message for job in finished]
    assert all(state.attempt == 1 for job in finished for image in job.images for state in image.passes)
    report("gateway_restart", jobs=3, succeeded=3)


# --- a pass that can never succeed ------------------------------------------------------------------------------------


async def test_a_permanently_failing_pass_fails_its_job_naming_the_pass_and_others_run_on(
    cluster, gateway, objects, tmp_path
):
    from multipass_dev.tiny_models.diffusion import SD15_MODEL, write_random_lora

    tenant = await gateway.tenant("corrupt")
    lora = write_random_lora(MODELS_ROOT / "diffusion" / SD15_MODEL, tmp_path / "lora.safetensors", seed=5)

    async def parts():
        yield jobs_pb2.RegisterTuneRequest(
            metadata=jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family="sd15")
        )
        yield jobs_pb2.RegisterTuneRequest(chunk=lora.read_bytes())

    tune = await gateway.tunes.RegisterTune(parts(), metadata=bearer(tenant.api_key))
    # The stored file rots: it no longer matches the sha256 its tune record holds.
    data = lora.read_bytes()
    await objects.put_bytes(tune.file.bucket, tune.file.key, data[: len(data) // 2])

    bad = await gateway.submit(tenant.api_key, f"a portrait in a garden <lora:{tune.tune_id}:1>", steps="2")
    good = [await gateway.submit(tenant.api_key, f"a garden, bench {i}", steps="2") for i in range(3)]
    job = await finished_cleanly(gateway, objects, tenant, bad)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.pass_name == "base"
    assert job.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "does not match its reference" in job.error.message
    for job_id in good:
        assert (await finished_cleanly(gateway, objects, tenant, job_id)).state == SUCCEEDED
    report(
        "permanent_failure", failed_job_code="FAILED_PRECONDITION", failed_pass="base", other_jobs_succeeded=3
    )


# --- many jobs, random kills ------------------------------------------------------------------------------------------


async def test_jobs_under_random_worker_kills_all_reach_a_terminal_state(
    cluster, gateway, objects, pass_events
):
    rng = random.Random(20260517)
    tenants = [await gateway.tenant(f"soak-{i}") for i in range(3)]
    prompts = ["a bridge over a river", "a fox in snow", "a street BREAK photo BREAK ohwx man"]
    submitted = []
    for i in range(24):
        tenant = tenants[i % 3]
        params = {"steps": str(rng.choice((8, 16, 24))), "num_images": str(rng.choice((1, 1, 2)))}
        submitted.append((tenant, await gateway.submit(tenant.api_key, rng.choice(prompts), **params)))
    started = time.monotonic()
    kills = []
    pending = {job_id for _, job_id in submitted}
    while pending and len(kills) < 3 and time.monotonic() - started < 120:
        await asyncio.sleep(rng.uniform(1.5, 3.0))
        serving = [
            name
            for name, worker in cluster.workers.items()
            if worker.running and grpc_serving(worker.grpc_address)
        ]
        if serving:  # a worker that is running passes (the other one may still be restarting)
            victim = rng.choice(serving)
            cluster.workers[victim].kill()
            kills.append(victim)
            cluster.workers[victim].spawn()  # back in ~10 s, as a supervisor would bring it
        pending = {
            job_id
            for tenant, job_id in submitted
            if (await gateway.get(tenant.api_key, job_id)).state not in TERMINAL
        }
    finished = [
        await finished_cleanly(gateway, objects, tenant, job_id, timeout=240) for tenant, job_id in submitted
    ]
    states = Counter(jobs_pb2.JobState.Name(job.state) for job in finished)
    ids = {job_id for _, job_id in submitted}
    runs = Counter(
        (e.job_id, e.image_index, e.pass_name)
        for e in (ev for name, ev in pass_events.seen if name == "started")
        if e.job_id in ids
    )
    report(
        "random_worker_kills",
        jobs=len(submitted),
        passes=len(runs),
        passes_run_again=sum(1 for count in runs.values() if count > 1),
        terminal=len(finished),
        lost=len(submitted) - len(finished),
        states=dict(states),
        kills=len(kills),
        seconds=round(time.monotonic() - started, 1),
    )
    assert len(kills) >= 2, kills
    assert states == {"JOB_STATE_SUCCEEDED": len(submitted)}, states


async def _until_running(gateway, tenant, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while (await gateway.get(tenant.api_key, job_id)).state == jobs_pb2.JOB_STATE_QUEUED:
        assert time.monotonic() < deadline, "job never started"
        await asyncio.sleep(0.1)
