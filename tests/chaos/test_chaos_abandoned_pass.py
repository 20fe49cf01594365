"""A pass whose every delivery dies with its worker (a request that crashes whoever runs it) is not lost:
JetStream's max-deliveries advisory reaches the gateway, which fails the attempt as UNAVAILABLE, runs it
again while attempts remain and otherwise fails the job naming the pass. The advisory waits in the stream
MULTIPASS_ADVISORIES, so one sent while no gateway is connected still ends its job.

The dying worker is a consumer on the real diffusion durable that takes each delivery and never answers,
exactly what a SIGKILLed worker leaves behind; the gateway, NATS and S3 are real (gateway_support)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    MODEL,
    Stack,
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)

from multipass import names
from multipass.v1 import common_pb2, jobs_pb2
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(90)
DELIVERIES = 2


class DyingWorker:
    """Takes pass requests from the diffusion durable and dies on each: never acks, naks or terms."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.taken: list[tuple[int, int]] = []  # (stream sequence, delivery)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        bus = self.stack.bus
        durable = names.diffusion_durable(MODEL)
        await bus.ensure_consumer(
            stream=names.STREAM_PASSES,
            durable=durable,
            filter_subject=names.diffusion_pass_subject(MODEL),
            ack_wait=1.0,
            max_deliver=DELIVERIES,
            max_ack_pending=16,
        )
        self._sub = await bus.js.pull_subscribe_bind(durable=durable, stream=names.STREAM_PASSES)
        self._task = asyncio.create_task(self._take())

    async def _take(self) -> None:
        while not self._stop.is_set():
            try:
                for msg in await self._sub.fetch(batch=1, timeout=0.3):
                    self.taken.append((msg.metadata.sequence.stream, msg.metadata.num_delivered))
            except (TimeoutError, nats.errors.TimeoutError):
                continue

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


async def submit(stack: Stack, key: str) -> str:
    request = jobs_pb2.SubmitJobRequest(
        prompt="a glass of water", params={"steps": "2", "w": "256", "h": "256"}
    )
    return (await stack.jobs.SubmitJob(request, metadata=bearer(key))).job_id


async def test_a_pass_that_kills_every_worker_fails_its_job_naming_the_pass(stack):
    await stack.worker.close()  # the healthy fake worker leaves; only the dying one takes work
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, pass_max_attempts=2))
    tenant = await stack.tenant()
    dying = DyingWorker(stack)
    await dying.start()
    started = time.monotonic()
    job_id = await submit(stack, tenant.api_key)
    job = await wait_for_job(stack, job_id, tenant.api_key, timeout=30)
    elapsed = time.monotonic() - started
    await dying.stop()

    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == common_pb2.ERROR_CODE_UNAVAILABLE and job.error.pass_name == "base"
    assert f"gave up after {DELIVERIES} deliveries" in job.error.message
    (base,) = [p for p in job.images[0].passes if p.name == "base"]
    assert base.attempt == 2  # attempt 1 abandoned, retried once, abandoned again
    assert any("attempt 1 failed" in warning for warning in job.warnings)
    # Each attempt was delivered exactly DELIVERIES times, then withdrawn from the work queue.
    assert sorted(delivery for _, delivery in dying.taken) == [1, 1, 2, 2]
    info = await stack.bus.js.stream_info(names.STREAM_PASSES)
    assert info.state.messages == 0
    print(f'RELIABILITY abandoned_pass {{"attempts": 2, "seconds_to_failed": {elapsed:.1f}}}')


async def test_an_abandoned_attempt_runs_again_on_a_healthy_worker(stack):
    await stack.worker.close()
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, pass_max_attempts=2))
    tenant = await stack.tenant()
    dying = DyingWorker(stack)
    await dying.start()
    job_id = await submit(stack, tenant.api_key)
    deadline = time.monotonic() + 20
    while (await _base(stack, tenant, job_id)).attempt < 2:
        assert time.monotonic() < deadline, dying.taken
        await asyncio.sleep(0.05)
    await dying.stop()
    # A healthy worker on the same consumer takes attempt 2 (or its redelivery, if the dying one had it).
    healthy_stop = asyncio.Event()
    healthy = asyncio.create_task(
        stack.bus.consume(
            stream=names.STREAM_PASSES,
            durable=names.diffusion_durable(MODEL),
            filter_subject=names.diffusion_pass_subject(MODEL),
            handler=stack.worker.handle,
            ack_wait=1.0,
            max_deliver=DELIVERIES,
            max_ack_pending=16,
            stop=healthy_stop,
            fetch_timeout=0.3,
        )
    )
    job = await wait_for_job(stack, job_id, tenant.api_key, timeout=30)
    healthy_stop.set()
    await healthy
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    assert (await _base(stack, tenant, job_id)).attempt == 2
    assert [(r.pass_name, r.attempt) for r in stack.worker.seen] == [("base", 2)]


async def test_an_advisory_sent_while_no_gateway_is_connected_still_ends_its_job(stack):
    await stack.worker.close()
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, pass_max_attempts=1))
    tenant = await stack.tenant()
    dying = DyingWorker(stack)
    await dying.start()
    job_id = await submit(stack, tenant.api_key)
    deadline = time.monotonic() + 20
    while not dying.taken:
        assert time.monotonic() < deadline, "the pass never reached the dying worker"
        await asyncio.sleep(0.05)
    await stack.stop_gateway()  # no gateway from before the last delivery until after the advisory
    gone_at = time.monotonic()
    while len(dying.taken) < DELIVERIES or await _advisories(stack) == 0:
        assert time.monotonic() < deadline, (dying.taken, await _advisories(stack))
        await asyncio.sleep(0.05)
    assert await _advisories(stack) == 1  # sent while no gateway was connected, and kept
    absent = time.monotonic() - gone_at
    await dying.stop()

    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, pass_max_attempts=1))
    back_at = time.monotonic()
    job = await wait_for_job(stack, job_id, tenant.api_key, timeout=20)
    ended_after = time.monotonic() - back_at
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == common_pb2.ERROR_CODE_UNAVAILABLE and job.error.pass_name == "base"
    assert f"gave up after {DELIVERIES} deliveries" in job.error.message
    # Handled once, then removed: the ack follows the handling, which may end the job a moment before.
    acked_by = time.monotonic() + 5
    while await _advisories(stack) and time.monotonic() < acked_by:
        await asyncio.sleep(0.05)
    assert await _advisories(stack) == 0
    assert (await stack.bus.js.stream_info(names.STREAM_PASSES)).state.messages == 0
    print(
        "RELIABILITY advisory_while_no_gateway "
        f'{{"gateway_absent_s": {absent:.1f}, "job_failed_after_gateway_back_s": {ended_after:.1f}}}'
    )


async def _advisories(stack: Stack) -> int:
    return (await stack.bus.js.stream_info(names.STREAM_ADVISORIES)).state.messages


async def _base(stack: Stack, tenant, job_id: str) -> jobs_pb2.PassState:
    job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(tenant.api_key))
    return next(p for p in job.images[0].passes if p.name == "base")
