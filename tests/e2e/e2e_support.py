"""Helpers of the end-to-end tests (imported by the test modules; fixtures live in conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

from multipass.v1 import jobs_pb2
from multipass_client import Client

#: Callback receivers of these tests listen on 127.0.0.2; allow-listing only that address keeps
#: http://127.0.0.1/... refused, as for any user.
CALLBACK_HOST = "127.0.0.2"
#: Small and quick on the tiny models: the minimum size, two denoising steps.
FAST = {"steps": "2", "w": "256", "h": "256"}


def register_lora(
    client: Client, model: Path, tmp_path: Path, *, seed: int, token: str = "ohwx", class_name: str = "woman"
) -> str:
    from multipass_dev.tiny_models.diffusion import write_random_lora

    path = write_random_lora(model, tmp_path / f"lora-{seed}.safetensors", seed=seed)
    return client.tunes.register(path, token=token, class_name=class_name, base_family="sd15").tune_id


def two_person_prompt(first_tune: str, second_tune: str) -> str:
    return (
        "a ballroom at a gala, chandeliers BREAK candid photo, soft light "
        f"BREAK ohwx woman, red evening gown <lora:{first_tune}:1> "
        f"BREAK ohwx man, black tuxedo <lora:{second_tune}:0.8>"
    )


def follow(client: Client, job_id: str, timeout: float = 180) -> tuple[jobs_pb2.Job, list[jobs_pb2.JobEvent]]:
    """Every event of the job until it ends, and the job as it ended."""
    events: list[jobs_pb2.JobEvent] = []
    job = client.jobs.wait(job_id, on_event=events.append, timeout=timeout)
    return job, events


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
