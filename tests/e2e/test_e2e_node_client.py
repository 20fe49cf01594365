"""A Node client built straight from protos/ (``examples/node-client``) submits and watches a job.

Installs ``@grpc/grpc-js`` and ``@grpc/proto-loader`` with npm into examples/node-client/node_modules
(git-ignored) when they are not there yet. Skips only when node/npm are missing, and never when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import FAST

from multipass.v1 import jobs_pb2

pytestmark = pytest.mark.e2e

NODE_CLIENT = Path(__file__).resolve().parents[2] / "examples" / "node-client"
PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader")


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = "node" if not node else "npm"
        if _on_ci():
            pytest.fail(
                f"{missing} is not installed, and CI=true forbids skipping the Node client test",
                pytrace=False,
            )
        pytest.skip(f"{missing} is not installed")
    if not all((NODE_CLIENT / "node_modules" / package / "package.json").is_file() for package in PACKAGES):
        command = "ci" if (NODE_CLIENT / "package-lock.json").is_file() else "install"
        result = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"npm {command} failed:\n{result.stderr[-3000:]}"
    return node


def run_client(node: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node, str(NODE_CLIENT / "client.mjs"), *args],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_node_client_submits_a_job_and_follows_its_events(stack, client, node):
    params = [arg for name, value in FAST.items() for arg in ("--param", f"{name}={value}")]
    result = run_client(
        node,
        "--addr",
        stack.address,
        "--api-key",
        stack.api_key,
        "--prompt",
        "a paper boat on a pond",
        *params,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    job_id = lines[0]["submitted"]
    events = lines[1:]
    assert [event["sequence"] for event in events] == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "accepted"
    assert "step_progress" in {event["kind"] for event in events}
    assert events[-1]["kind"] == "finished" and events[-1]["finished"]["state"] == "JOB_STATE_SUCCEEDED"
    # Field names are the proto names (keepCase), as in the Python client and job.json.
    completed = next(event for event in events if event["kind"] == "pass_completed")
    assert "pass_name" in completed["pass_completed"] and "image_index" in completed["pass_completed"]
    job = client.jobs.get(job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.last_sequence == events[-1]["sequence"]


def test_node_client_reports_the_grpc_code_of_a_failed_call(stack, node):
    result = run_client(node, "--addr", stack.address, "--api-key", "mpk_not_a_key", "--prompt", "a cat")
    assert result.returncode == 2
    assert result.stderr.startswith("UNAUTHENTICATED")
