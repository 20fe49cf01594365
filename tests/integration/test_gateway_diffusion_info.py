"""SubmitJob while the diffusion workers do not answer Diffusion.Info: scaled to zero (a gateway that starts
then uses the answer stored in KV, and the job waits in the queue for the worker its lag starts), or
stalled (submits go on with the answer at hand instead of waiting out the RPC's deadline one by one)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    FakeDiffusionInfo,
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)

from multipass import names
from multipass.grpc.server import Registration, start_grpc_server
from multipass.v1 import diffusion_pb2_grpc, jobs_pb2
from multipass_dev.local.process import free_port

PROMPT = "a quiet harbour at dawn\nsteps=4\nw=256\nh=256"


async def forget_stored_info(stack) -> None:
    await (await stack.bus.kv(names.KV_JOBS)).delete(names.DIFFUSION_INFO_KEY)


async def test_a_gateway_started_while_no_worker_runs_queues_jobs_from_the_stored_answer(stack):
    await forget_stored_info(stack)
    await stack.start_gateway()
    tenant = await stack.tenant()
    first = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key)
    )
    assert (await wait_for_job(stack, first.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED
    await stack.stop_gateway()

    # The workers scaled to zero: nothing listens where Diffusion.Info was answered.
    stack.worker.gate.clear()
    await stack.start_gateway(diffusion_target=f"127.0.0.1:{free_port()}")
    queued = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key)
    )
    assert queued.job_id
    job = await stack.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=queued.job_id), metadata=bearer(tenant.api_key)
    )
    assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
    # The stored answer still checks what it holds: a component no worker has is refused.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt=PROMPT + "\nface_correct=true"), metadata=bearer(tenant.api_key)
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "face_correct" in refused.value.details()
    # A worker comes up and takes the queued job.
    stack.worker.gate.set()
    assert (await wait_for_job(stack, queued.job_id, tenant.api_key)).state == jobs_pb2.JOB_STATE_SUCCEEDED


async def test_with_no_worker_and_no_stored_answer_submit_is_unavailable(stack):
    await forget_stored_info(stack)
    await stack.start_gateway(diffusion_target=f"127.0.0.1:{free_port()}")
    tenant = await stack.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Diffusion.Info" in caught.value.details()


class StallingInfo(FakeDiffusionInfo):
    """Answers until ``stalled`` is set, then never (a worker process that hangs)."""

    def __init__(self, capabilities: list[str]):
        super().__init__(capabilities)
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def Info(self, request, context):
        if self.stalled.is_set():
            await self.release.wait()
        return await super().Info(request, context)


async def test_submits_go_on_while_the_workers_stall(stack, capabilities):
    info = StallingInfo(capabilities)
    server = await start_grpc_server(
        "127.0.0.1:0",
        [Registration(diffusion_pb2_grpc.add_DiffusionServicer_to_server, info, "multipass.v1.Diffusion")],
    )
    try:
        await stack.start_gateway(diffusion_target=server.address, info_ttl_seconds=0.2)
        tenant = await stack.tenant()
        await stack.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key))
        info.stalled.set()
        await asyncio.sleep(0.3)  # the answer is out of date; asking now would wait 5 s (the RPC deadline)
        started = time.monotonic()
        submitted = await asyncio.gather(
            *(
                stack.jobs.SubmitJob(
                    jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key)
                )
                for _ in range(6)
            )
        )
        for _ in range(4):
            submitted.append(
                await stack.jobs.SubmitJob(
                    jobs_pb2.SubmitJobRequest(prompt=PROMPT), metadata=bearer(tenant.api_key)
                )
            )
        took = time.monotonic() - started
        assert len({s.job_id for s in submitted}) == 10
        assert took < 4.0, f"10 submits took {took:.1f} s while Diffusion.Info stalled"
    finally:
        info.release.set()
        await stack.stop_gateway()
        await server.stop(0.5)
