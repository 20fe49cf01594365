"""ListJobs pages fit what any gRPC client receives by default (4 MiB), however large the jobs are.

A job of eight images with eight persons and long prompts is close to 100 KB as GetJob returns it, so
a page of 100 such jobs is larger than the gateway may send (8 MiB) and twice what grpc-js, Go, Java and
Python clients accept unless told otherwise: the page ends early instead, and its next_page_token
continues with the job that did not fit.
"""

from __future__ import annotations

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)

from multipass.v1 import events_pb2, jobs_pb2, jobs_pb2_grpc
from multipass_gateway.app.submission import new_job_id

#: What gRPC clients receive by default.
CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024
COPIES = 60
#: About 150 KB of warnings per copy: 60 copies are 9 MB together.
WARNINGS = ["image 0 faces: " + "w" * 1000] * 150


async def test_a_page_of_large_jobs_ends_early_and_the_next_pages_hold_the_rest(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    key = bearer(tenant.api_key)
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a pond", params={"steps": "2", "w": "256", "h": "256"}),
        metadata=key,
    )
    await wait_for_job(stack, submitted.job_id, tenant.api_key)
    record = await stack.gateway.jobs.load(tenant.tenant, submitted.job_id)
    ids = [submitted.job_id]
    for _ in range(COPIES):
        copy = events_pb2.JobRecord()
        copy.CopyFrom(record)
        copy.job.job_id = new_job_id()
        copy.job.warnings[:] = WARNINGS
        await stack.gateway.jobs.create(copy)
        ids.append(copy.job.job_id)

    options = [("grpc.max_receive_message_length", CLIENT_RECEIVE_LIMIT)]
    async with grpc.aio.insecure_channel(stack.gateway.address, options=options) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        listed, token, pages = [], "", 0
        while True:
            page = await jobs.ListJobs(
                jobs_pb2.ListJobsRequest(page_size=100, page_token=token), metadata=key
            )
            assert page.ByteSize() <= CLIENT_RECEIVE_LIMIT
            assert page.jobs, "a page with a next_page_token holds at least one job"
            listed += [job.job_id for job in page.jobs]
            pages += 1
            token = page.next_page_token
            if not token:
                break
    assert pages > 2
    assert listed == sorted(ids, reverse=True)
