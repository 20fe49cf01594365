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
from e2e_support import CALLBACK_HOST

from multipass_client import Client, connect
from multipass_client.downloads import S3Reader, s3_reader_for
from multipass_client.stack_record import StackPaths, admin_token, dev_api_key, read_state
from multipass_dev.stack.state import pid_alive

E2E_ENV = {
    "MULTIPASS_FETCH_ALLOW_HOSTS": CALLBACK_HOST,
    "MULTIPASS_CALLBACK_BACKOFF_SECONDS": "0.2",
    "MULTIPASS_CALLBACK_MAX_ATTEMPTS": "4",
    # A pass lost with a killed worker is redelivered after this long.
    "MULTIPASS_DIFFUSION_ACK_WAIT_S": "8",
    "MULTIPASS_LOG_LEVEL": "INFO",
}
#: Variables of the developer's shell that would point the stack elsewhere.
UNSET = (
    "MULTIPASS_MODEL_DIR",
    "MULTIPASS_S3_ENDPOINT",
    "MULTIPASS_API_KEY",
    "MULTIPASS_ADMIN_TOKEN",
    "MULTIPASS_NATS_URL",
)


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

    def cli(
        self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """``multipass ARGS`` as a user runs it (credentials and address from the stack directory)."""
        return subprocess.run(
            [sys.executable, "-m", "multipass_client.cli.main", *args],
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
            pytest.fail(
                f"`multipass up --detach` failed ({up.returncode}):\n{up.stderr[-6000:]}", pytrace=False
            )
        print(f"\nlocal stack up in {time.monotonic() - started:.1f} s at {handle.address}", file=sys.stderr)
        yield handle
    finally:
        recorded = handle.state
        down = handle.cli("down", timeout=180)
        pids = [recorded.get("supervisor_pid")] + [
            p.get("pid") for p in (recorded.get("processes") or {}).values()
        ]
        leftovers = [pid for pid in pids if pid and pid_alive(pid)]
        assert down.returncode == 0, down.stderr
        assert not leftovers, f"`multipass down` left processes running: {leftovers}"


@pytest.fixture(scope="session")
def client(stack) -> Iterator[Client]:
    with stack.client() as dev:
        yield dev


@pytest.fixture(scope="session")
def sd15_model(stack) -> Path:
    from multipass_dev.stack.demo import sd15_model

    return sd15_model(stack.model_dir)
