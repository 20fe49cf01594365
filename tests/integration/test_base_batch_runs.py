"""Batched base passes through real NATS JetStream and S3: the gateway sends a num_images job's base
passes as one request, the real diffusion worker (tiny SD1.5) runs it as one batch, and every image's
chain advances on its own events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from diffusion_support import serving, tiny_worker_settings
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)

from multipass import names
from multipass.names import BUCKET_JOBS
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2
from multipass_dev.tiny_models import build_tiny_models
from multipass_dev.tiny_models.diffusion import SD15_MODEL

pytestmark = pytest.mark.timeout(180)
MODELS_ROOT = Path(__file__).resolve().parents[2] / ".multipass" / "test-models"


@pytest.fixture
def served_models() -> dict[str, str]:
    return {SD15_MODEL: "sd15"}


@pytest.fixture
async def diffusion(nats_server, s3_settings, tmp_path):
    settings = tiny_worker_settings(
        build_tiny_models(MODELS_ROOT),
        nats_server.url,
        s3_settings.endpoint,
        tmp_path / "tunes",
        PROGRESS_INTERVAL_S="0",
    )
    async with serving(settings) as running:
        yield running


class Seen:
    """Messages on a subject (a core subscription hears what JetStream stores for that subject)."""

    def __init__(self, message_type):
        self.message_type = message_type
        self.items: list[tuple[str, object]] = []

    async def on_message(self, msg) -> None:
        item = self.message_type()
        item.ParseFromString(msg.data)
        self.items.append((msg.subject, item))


async def test_three_images_run_their_bases_as_one_batch(stack, diffusion):
    requests = Seen(diffusion_pb2.PassRequest)
    await stack.bus.subscribe_core(names.diffusion_pass_subject(SD15_MODEL), requests.on_message)
    await stack.start_gateway()
    tenant = await stack.tenant()
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a lighthouse at dusk",
            params={"num_images": "3", "steps": "3", "w": "256", "h": "256", "seed": "5"},
        ),
        metadata=bearer(tenant.api_key),
    )
    job = await wait_for_job(stack, submitted.job_id, tenant.api_key, timeout=120)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    bases = [request for _, request in requests.items if request.pass_name == "base"]
    assert len(bases) == 1  # one request, not three
    (base,) = bases
    assert base.image_index == 0 and [(m.image_index, m.seed) for m in base.batch] == [(1, 6), (2, 7)]
    pictures = []
    for image in job.images:
        assert image.status == jobs_pb2.PASS_STATUS_COMPLETED
        state = next(p for p in image.passes if p.name == "base")
        assert state.status == jobs_pb2.PASS_STATUS_COMPLETED and state.attempt == 1
        assert state.output.key.endswith(f"image-{image.index}/base.png")
        assert image.final.key == state.output.key
        pictures.append(np.asarray(await stack.store.get_image(state.output), dtype=np.int16))
    # Three seeds, three different pictures.
    assert np.abs(pictures[0] - pictures[1]).mean() > 3 and np.abs(pictures[1] - pictures[2]).mean() > 3
    # Each image reported its own start and step progress.
    events = [
        e
        async for e in stack.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=submitted.job_id), metadata=bearer(tenant.api_key)
        )
    ]
    started = {e.pass_started.image_index for e in events if e.HasField("pass_started")}
    stepped = {e.step_progress.image_index for e in events if e.HasField("step_progress")}
    assert started == stepped == {0, 1, 2}


def batched_request(job_id: str, spec: diffusion_pb2.PassSpec) -> diffusion_pb2.PassRequest:
    request = diffusion_pb2.PassRequest(
        job_id=job_id,
        tenant="t1",
        image_index=0,
        pass_name="base",
        attempt=1,
        spec=spec,
        output_bucket=BUCKET_JOBS,
        output_key=f"jobs/t1/{job_id}/image-0/base.png",
    )
    for image in (1, 2):
        request.batch.add(
            image_index=image,
            attempt=1,
            seed=spec.seed + image,
            output_key=f"jobs/t1/{job_id}/image-{image}/base.png",
        )
    return request


async def wait_for(seen: Seen, predicate, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate([item for _, item in seen.items]):
            await asyncio.sleep(0.05)


async def test_worker_publishes_each_members_events_and_stores_each_output(diffusion, bus, store):
    job_id = "batchjob0123456789abcdef"
    seen = Seen(events_pb2.PassEvent)
    await bus.subscribe_core(f"{names.EVENTS_PREFIX}.{job_id}.>", seen.on_message)
    spec = diffusion_pb2.PassSpec(
        kind="base",
        model=SD15_MODEL,
        prompt="a red barn",
        steps=3,
        cfg_scale=5.0,
        seed=20,
        width=64,
        height=64,
    )
    request = batched_request(job_id, spec)
    await bus.publish(
        names.diffusion_pass_subject(SD15_MODEL),
        request,
        msg_id=names.pass_msg_id(job_id, 0, "base", 1),
    )
    await wait_for(seen, lambda events: sum(e.HasField("completed") for e in events) == 3)
    events = [item for _, item in seen.items]
    for image in (0, 1, 2):
        own = [e for e in events if e.image_index == image]
        kinds = [e.WhichOneof("event") for e in own]
        assert kinds[0] == "started" and kinds[-1] == "completed" and "progress" in kinds
        result = own[-1].completed.result
        assert result.output.key == f"jobs/t1/{job_id}/image-{image}/base.png"
        assert result.metadata["batch"] == "3"
        assert await store.exists(BUCKET_JOBS, result.output.key)

    # A batch that cannot run fails every member, each under its own image index.
    broken_id = "batchjob0123456789abcdee"
    await bus.subscribe_core(f"{names.EVENTS_PREFIX}.{broken_id}.>", seen.on_message)
    broken = batched_request(broken_id, diffusion_pb2.PassSpec(kind="base", model=SD15_MODEL, steps=0))
    await bus.publish(
        names.diffusion_pass_subject(SD15_MODEL),
        broken,
        msg_id=names.pass_msg_id(broken_id, 0, "base", 1),
    )
    await wait_for(
        seen, lambda items: sum(e.job_id == broken_id and e.HasField("failed") for e in items) == 3
    )
    failed = [e for _, e in seen.items if e.job_id == broken_id and e.HasField("failed")]
    assert sorted(e.image_index for e in failed) == [0, 1, 2]
    assert all(e.failed.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT for e in failed)
