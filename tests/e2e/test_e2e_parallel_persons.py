"""Parallel persons end to end: the same two-person job with parallel persons on (the session's stack) and
off (a second local stack, ``MULTIPASS_GATEWAY_PARALLEL_PERSONS=false``) gives byte-identical final images,
through real NATS, S3 and the tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from e2e_support import follow

from multipass.v1 import jobs_pb2
from multipass_client import connect
from multipass_client.downloads import s3_reader_for
from multipass_client.stack_record import StackPaths, dev_api_key, read_state
from multipass_dev.stack.local_stack import LocalStack, StackConfig
from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE

pytestmark = pytest.mark.e2e

#: Persons far apart in a wide, low scene: their crops (at most 2:1) miss each other's masks.
PROMPT = (
    "a long promenade by the sea at dusk BREAK candid photo, soft light "
    "BREAK ohwx woman, red evening gown BREAK ohwx man, black tuxedo"
)
PARAMS = {"steps": "3", "w": "1536", "h": "256", "seed": "77"}
UNSET = ("MULTIPASS_MODEL_DIR", "MULTIPASS_S3_ENDPOINT", "MULTIPASS_API_KEY", "MULTIPASS_ADMIN_TOKEN")


@pytest.fixture(scope="module")
def sequential_stack(stack, tmp_path_factory) -> Iterator[StackPaths]:
    """A second local stack on the session stack's tiny models, with parallel persons off."""
    paths = StackPaths(tmp_path_factory.mktemp("sequential") / ".multipass")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    config = StackConfig(
        paths=paths,
        model_dir=stack.model_dir,
        service_env={
            "MULTIPASS_DIFFUSION_MODELS": SD15_MODEL,
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
            "MULTIPASS_GATEWAY_PARALLEL_PERSONS": "false",
        },
        base_env=env,
        ready_timeout=300.0,
    )
    local = LocalStack(config)
    local.start()
    try:
        yield paths
    finally:
        local.stop()


def run(address: str, api_key: str) -> jobs_pb2.Job:
    with connect(address, api_key=api_key, timeout=120) as client:
        submitted = client.jobs.submit(PROMPT, PARAMS)
        job, _events = follow(client, submitted.job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    return job


def test_parallel_and_sequential_persons_give_the_same_final_image(stack, sequential_stack):
    parallel = run(stack.address, stack.api_key)
    sequential = run(read_state(sequential_stack)["gateway_address"], dev_api_key(sequential_stack))

    parallel_passes = {p.name: p for p in parallel.images[0].passes}
    assert [p.name for p in parallel.images[0].passes] == [
        "prepare",
        "base",
        "segment",
        "person-0",
        "person-1",
        "composite-0",
    ]
    assert all(p.status == jobs_pb2.PASS_STATUS_COMPLETED for p in parallel_passes.values())
    assert [p.name for p in sequential.images[0].passes] == [
        "prepare",
        "base",
        "segment",
        "person-0",
        "person-1",
    ]
    # Both persons of the parallel job worked on the segmented image; the composite merged them.
    assert parallel.images[0].final.key == parallel_passes["composite-0"].output.key

    parallel_bytes = stack.s3().read(parallel.images[0].final.bucket, parallel.images[0].final.key)
    reader = s3_reader_for(read_state(sequential_stack))
    sequential_bytes = reader.read(sequential.images[0].final.bucket, sequential.images[0].final.key)
    assert parallel_bytes == sequential_bytes
    # The persons changed the image: the equality is not that of two untouched base images.
    base = stack.s3().read(parallel_passes["base"].output.bucket, parallel_passes["base"].output.key)
    assert parallel_bytes != base
