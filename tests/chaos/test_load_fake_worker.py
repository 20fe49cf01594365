"""Load: hundreds of jobs submitted concurrently to the real gateway (real NATS, S3, parser; the instant fake
worker of gateway_support, since the tiny diffusion models on 2 shared cores would measure the CPU, not
the gateway). Every submit is either accepted and its job completes, or refused cleanly with
RESOURCE_EXHAUSTED and a retry hint; submit latency percentiles and completion counts are reported."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    TERMINAL,
    Stack,
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import api

from multipass.v1 import jobs_pb2
from multipass_gateway.settings import Limits

pytestmark = pytest.mark.timeout(240)
TENANTS = 4
JOBS_PER_TENANT = 90
#: Pending passes a tenant may hold: each burst outruns it, so part of it is refused.
TENANT_BUDGET = 60
CONCURRENT_CALLS = 48


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def retry_hint(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


async def test_hundreds_of_concurrent_jobs_complete_or_are_refused_cleanly(stack: Stack):
    await stack.start_gateway(
        limits=Limits(
            fetch_timeout_seconds=5.0,
            tenant_max_pending_passes=TENANT_BUDGET,
            global_max_pending_passes=5000,
            retry_after_seconds=3.0,
        ),
        scheduler_interval_seconds=0.2,
        event_concurrency=16,
    )
    tenants = [await stack.tenant(f"load-{i}") for i in range(TENANTS)]
    gate = asyncio.Semaphore(CONCURRENT_CALLS)
    latencies: list[float] = []
    outcomes: Counter = Counter()
    accepted: list[tuple[str, str]] = []
    hints: set[float | None] = set()
    refused: Counter = Counter()

    async def submit(tenant, index: int) -> None:
        request = jobs_pb2.SubmitJobRequest(
            prompt=f"a lighthouse, variation {index}", params={"steps": "1", "w": "256", "h": "256"}
        )
        async with gate:
            started = time.monotonic()
            try:
                response = await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key), timeout=60)
            except grpc.aio.AioRpcError as error:
                latencies.append(time.monotonic() - started)
                outcomes[error.code().name] += 1
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    hints.add(retry_hint(error))
                    refused[tenant.tenant] += 1
                return
            latencies.append(time.monotonic() - started)
            outcomes["OK"] += 1
            accepted.append((tenant.api_key, response.job_id))

    stack.worker.gate.clear()  # the burst arrives before any job can finish: the budget is really tested
    started = time.monotonic()
    calls = [submit(tenant, i) for i in range(JOBS_PER_TENANT) for tenant in tenants]
    await asyncio.gather(*calls)
    submit_seconds = time.monotonic() - started
    stack.worker.gate.set()

    states: Counter = Counter()
    pending = list(accepted)
    deadline = time.monotonic() + 150
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} jobs unfinished"
        still = []
        for key, job_id in pending:
            job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(key))
            if job.state in TERMINAL:
                states[jobs_pb2.JobState.Name(job.state)] += 1
            else:
                still.append((key, job_id))
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    total_seconds = time.monotonic() - started

    submitted = TENANTS * JOBS_PER_TENANT
    figures = {
        "submitted": submitted,
        "accepted": outcomes["OK"],
        "refused_resource_exhausted": outcomes["RESOURCE_EXHAUSTED"],
        "other_errors": submitted - outcomes["OK"] - outcomes["RESOURCE_EXHAUSTED"],
        "completed": dict(states),
        "submit_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "submit_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "submit_burst_seconds": round(submit_seconds, 1),
        "all_done_seconds": round(total_seconds, 1),
        "concurrent_calls": CONCURRENT_CALLS,
    }
    print(f"RELIABILITY load {json.dumps(figures, sort_keys=True)}", file=sys.stderr)

    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert outcomes["OK"] + outcomes["RESOURCE_EXHAUSTED"] == submitted
    # Each tenant got its budget's worth (a soft bound: concurrent submits may overshoot a little).
    for tenant in tenants:
        mine = sum(1 for key, _ in accepted if key == tenant.api_key)
        assert TENANT_BUDGET <= mine < JOBS_PER_TENANT and mine + refused[tenant.tenant] == JOBS_PER_TENANT
    assert hints == {3.0}
    assert states == {"JOB_STATE_SUCCEEDED": outcomes["OK"]}, states
    # Nothing is left behind in KV, not even delete markers: every pending-work marker and scheduler
    # entry of hundreds of jobs is gone, so the listings each submit and release round read stay short.
    deadline = time.monotonic() + 10
    while (left := await kv_messages(stack, "active.>") + await kv_messages(stack, "sched.>")) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.2)
    assert left == 0


async def kv_messages(stack: Stack, pattern: str) -> int:
    """Messages (live values and delete markers alike) under ``pattern`` in the jobs bucket's stream."""
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        filter_subject=f"$KV.multipass-jobs.{pattern}",
        inactive_threshold=5.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await stack.bus.js.add_consumer("KV_multipass-jobs", config)  # the bucket's stream
    await stack.bus.js.delete_consumer(info.stream_name, info.name)
    return info.num_pending or 0
