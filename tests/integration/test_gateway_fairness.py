"""Fair scheduling between tenants through the real gateway: per-tenant ready queues in KV, released
round-robin with bounded passes in flight (fake worker from gateway_support, real NATS and S3)."""

from __future__ import annotations

import asyncio
import time

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
from multipass.v1 import jobs_pb2
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(120)
ONE_PASS = jobs_pb2.SubmitJobRequest(prompt="a cat on a sofa", params={"steps": "1", "w": "256", "h": "256"})


async def work_queue_lag(stack: Stack) -> int:
    state = await stack.bus.consumer_info(names.STREAM_PASSES, names.diffusion_durable(MODEL))
    return state.lag


async def eventually(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def submit_many(stack: Stack, key: str, count: int) -> list[str]:
    return [(await stack.jobs.SubmitJob(ONE_PASS, metadata=bearer(key))).job_id for _ in range(count)]


async def test_one_tenants_many_jobs_do_not_starve_another_tenants_one_job(stack):
    limits = Limits(fetch_timeout_seconds=5.0, tenant_max_passes_in_flight=2, max_passes_in_flight=4)
    await stack.start_gateway(limits=limits, scheduler_interval_seconds=0.2)
    scheduler = stack.gateway.components["scheduler"]
    many, one = await stack.tenant("many"), await stack.tenant("one")
    stack.worker.gate.clear()  # the worker takes passes but holds them

    a_jobs = await submit_many(stack, many.api_key, 24)
    # Only tenant A's bounded share reached the work queue; the rest waits in A's ready queue in KV.
    await eventually(lambda: _equals(work_queue_lag(stack), 2))
    queues = await scheduler.queues()
    assert len(queues.ready[many.tenant]) == 22 and queues.in_flight[many.tenant] == 2

    # A ledger of what the scheduler released and then removed from flight (a pass ended, its job ended, or
    # the sweeper found it over): at every release the tenant's and the global count stay within bounds.
    flying: set = set()
    highest = {"global": 0, "tenant": 0}
    release, purge = scheduler._release, scheduler._purge

    async def spied_release(key):
        released = await release(key)
        if released:
            flying.add(key)
            highest["global"] = max(highest["global"], len(flying))
            highest["tenant"] = max(highest["tenant"], sum(1 for k in flying if k.tenant == key.tenant))
        return released

    async def spied_purge(pattern: str):
        await purge(pattern)
        flying.difference_update({k for k in flying if subject_matches(pattern, k.flight_key)})

    scheduler._release, scheduler._purge = spied_release, spied_purge
    flying.update(key for key in queues.flight)  # A's two, released before the spy

    (b_job,) = await submit_many(stack, one.api_key, 1)
    await eventually(lambda: _equals(work_queue_lag(stack), 3))  # B's pass went at once
    stack.worker.gate.set()
    finished = {job_id: await wait_for_job(stack, job_id, many.api_key, 60) for job_id in a_jobs}
    finished[b_job] = await wait_for_job(stack, b_job, one.api_key, 60)

    assert {job.state for job in finished.values()} == {jobs_pb2.JOB_STATE_SUCCEEDED}
    # The worker ran B's pass among the first three it was given, not after A's 24.
    order = [request.job_id for request in stack.worker.seen]
    assert order.index(b_job) < 3, order.index(b_job)
    by_end = sorted(finished, key=lambda j: finished[j].finished_at.ToNanoseconds())
    position = by_end.index(b_job)
    assert position <= 3 and len(by_end) - 1 - position >= 20, position
    assert highest == {"global": 3, "tenant": 2}, highest  # the bounds were reached, never passed
    # Every slot was given back: nothing ready, nothing in flight.
    queues = await eventually(lambda: _empty(scheduler))
    assert not queues.flight and not any(queues.ready.values())


async def test_queued_passes_survive_a_gateway_restart_and_a_cancel_withdraws_them(stack):
    limits = Limits(fetch_timeout_seconds=5.0, tenant_max_passes_in_flight=1, max_passes_in_flight=2)
    await stack.start_gateway(limits=limits, scheduler_interval_seconds=0.2)
    tenant = await stack.tenant()
    stack.worker.gate.clear()
    kept = await submit_many(stack, tenant.api_key, 3)
    (cancelled,) = await submit_many(stack, tenant.api_key, 1)
    await eventually(lambda: _equals(work_queue_lag(stack), 1))

    await stack.stop_gateway()
    await stack.start_gateway(limits=limits, scheduler_interval_seconds=0.2)
    scheduler = stack.gateway.components["scheduler"]
    queues = await scheduler.queues()
    assert [key.job_id for key in queues.ready[tenant.tenant]] == kept[1:] + [cancelled]

    response = await stack.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(job_id=cancelled), metadata=bearer(tenant.api_key)
    )
    assert response.cancelled
    assert cancelled not in [key.job_id for key in (await scheduler.queues()).ready.get(tenant.tenant, [])]

    stack.worker.gate.set()
    for job_id in kept:
        assert (await wait_for_job(stack, job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert (await wait_for_job(stack, cancelled, tenant.api_key)).state == jobs_pb2.JOB_STATE_CANCELLED
    # Each kept job's pass ran exactly once; the cancelled job's pass never reached the worker.
    ran = sorted(request.job_id for request in stack.worker.seen)
    assert ran == sorted(kept)

    # Entries a crash could leave behind (a pass's end seen but its marker not removed) are swept.
    jobs_kv = await stack.bus.kv("multipass-jobs")
    leftovers = [
        PassKey(tenant.tenant, kept[0], 0, "base", 1).flight_key,  # the job has ended
        PassKey(tenant.tenant, "0" * 24, 0, "base", 1).flight_key,  # no such job
        PassKey(tenant.tenant, kept[1], 0, "base", 7).ready_key,  # an attempt that never was
    ]
    for key in leftovers:
        await jobs_kv.put(key, b"0")
    await eventually(lambda: _empty(scheduler))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


async def _equals(awaitable, expected):
    return (await awaitable) == expected


async def _empty(scheduler):
    queues = await scheduler.queues()
    return queues if not queues.flight and not any(queues.ready.values()) else None
