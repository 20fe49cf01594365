"""The local stack's supervisor: a worker killed with SIGKILL mid-job is restarted, counted and logged, and
the job it was working on still finishes; ``multipass status`` reports it."""

from __future__ import annotations

import json
import os
import signal

import pytest
from e2e_support import FAST, follow, wait_until

from multipass.v1 import jobs_pb2

pytestmark = pytest.mark.e2e


def test_a_killed_diffusion_worker_is_restarted_and_its_job_still_finishes(stack, client):
    before = stack.state["processes"]["diffusion"]
    job_id = client.jobs.submit(
        "a windmill in a wheat field", {**FAST, "steps": "20", "num_images": "2"}
    ).job_id
    for event in client.jobs.watch(job_id):
        if event.WhichOneof("event") == "step_progress":
            break
    os.kill(before["pid"], signal.SIGKILL)

    after = wait_until(
        lambda: (
            (p := stack.state["processes"]["diffusion"])["restarts"] == before["restarts"] + 1
            and p["state"] == "running"
            and p["pid"] != before["pid"]
            and p
        ),
        timeout=180,
    )
    assert after["last_exit"] == "signal SIGKILL"
    job, _ = follow(client, job_id, timeout=240)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message

    supervisor_log = (stack.paths.logs / "supervisor.log").read_text()
    assert "diffusion exited with signal SIGKILL" in supervisor_log
    assert (
        f"diffusion restart {after['restarts']} after signal SIGKILL"
        in (stack.paths.logs / "diffusion.log").read_text()
    )

    status = stack.cli("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    reported = json.loads(status.stdout)
    assert reported["supervisor_alive"] is True
    assert reported["processes"]["diffusion"]["restarts"] == after["restarts"]
    assert {name: p["health"] for name, p in reported["processes"].items()} == {
        name: "SERVING"
        for name in ("nats", "s3", "prompt-parser", "segmentation", "diffusion", "gateway", "http-api")
    }
    table = stack.cli("status")
    assert table.returncode == 0
    diffusion_row = next(line for line in table.stdout.splitlines() if line.startswith("diffusion"))
    assert str(after["pid"]) in diffusion_row and "SERVING" in diffusion_row
    assert diffusion_row.split()[4] == str(after["restarts"])
