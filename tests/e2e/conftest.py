"""The local stack for end-to-end tests: started once per session exactly as a user does, with
``multipass up --detach`` (supervisor daemon, nats-server, moto S3, the four services, tiny models), and
stopped with ``multipass down``. Tests talk to it only through the public API (and the object store, to
check what was written).

Select these tests with ``-m e2e`` (every module here carries the mark); they take a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from multipass.client import Client, connect
from multipass.client.downloads import S3Reader, s3_reader_for
from multipass.stack.state import StackPaths, admin_token, dev_api_key, pid_alive, read_state
from multipass.v1 import jobs_pb2

#: Callback receivers of these tests listen on 127.0.0.2; allow-listing only that address keeps
#: http://127.0.0.1/... refused, as for any user.
CALLBACK_HOST = "127.0.0.2"
E2E_ENV = {
    "MULTIPASS_FETCH_ALLOW_HOSTS": CALLBACK_HOST,
    "MULTIPASS_CALLBACK_BACKOFF_SECONDS": "0.2",
    "MULTIPASS_CALLBACK_MAX_ATTEMPTS": "4",
    # A pass lost with a killed worker is redelivered after this long.
    "MULTIPASS_DIFFUSION_ACK_WAIT_S": "8",
    "MULTIPASS_LOG_LEVEL": "INFO",
}
#: Variables of the developer's shell that would point the stack elsewhere.
UNSET = ("MULTIPASS_MODEL_DIR", "MULTIPASS_S3_ENDPOINT", "MULTIPASS_API_KEY", "MULTIPASS_ADMIN_TOKEN", "MULTIPASS_NATS_URL")
#: Small and quick on the tiny models: the minimum size, two denoising steps.
FAST = {"steps": "2", "w": "256", "h": "256"}
TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_PARTIAL,
    jobs_pb2.JOB_STATE_CANCELLED,
}


@dataclass
class Stack:
    paths: StackPaths
    env: dict[str, str]

    @property
    def state(self) -> dict:
        return read_state(self.paths) or {}

    @property
    def address(self) -> str:
        return self.state["gateway_address"]

    @property
    def api_key(self) -> str:
        return dev_api_key(self.paths)

    @property
    def admin_token(self) -> str:
        return admin_token(self.paths)

    @property
    def model_dir(self) -> Path:
        return Path(self.state["model_dir"])

    @property
    def callback_key(self) -> str:
        return Path(self.state["callback_signing_key_file"]).read_text().strip()

    def client(self, api_key: str | None = None) -> Client:
        return connect(self.address, api_key=api_key or self.api_key, timeout=60)

    def s3(self) -> S3Reader:
        return s3_reader_for(self.state)

    def cli(self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``multipass ARGS`` as a user runs it (credentials and address from the stack directory)."""
        return subprocess.run(
            [sys.executable, "-m", "multipass.cli.main", *args],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e") / ".multipass"
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(E2E_ENV)
    env["MULTIPASS_STACK_DIR"] = str(root)
    handle = Stack(paths=StackPaths(root), env=env)
    started = time.monotonic()
    up = handle.cli("up", "--detach", "--timeout", "600", timeout=700)
    try:
        if up.returncode != 0:
            pytest.fail(f"`multipass up --detach` failed ({up.returncode}):\n{up.stderr[-6000:]}", pytrace=False)
        print(f"\nlocal stack up in {time.monotonic() - started:.1f} s at {handle.address}", file=sys.stderr)
        yield handle
    finally:
        recorded = handle.state
        down = handle.cli("down", timeout=180)
        pids = [recorded.get("supervisor_pid")] + [p.get("pid") for p in (recorded.get("processes") or {}).values()]
        leftovers = [pid for pid in pids if pid and pid_alive(pid)]
        assert down.returncode == 0, down.stderr
        assert not leftovers, f"`multipass down` left processes running: {leftovers}"


@pytest.fixture(scope="session")
def client(stack) -> Iterator[Client]:
    with stack.client() as dev:
        yield dev


@pytest.fixture(scope="session")
def sd15_model(stack) -> Path:
    from multipass.stack.demo import sd15_model

    return sd15_model(stack.model_dir)


def register_lora(client: Client, model: Path, tmp_path: Path, *, seed: int, token: str = "ohwx", class_name: str = "woman") -> str:
    from multipass.tiny_models.diffusion import write_random_lora

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
