"""Fault injection for the chaos tests: services as real processes that can be SIGKILLed, a loopback TCP
proxy that can cut a service off (the object store, as the workers see it), and the checks of "nothing
lost, nothing twice" on a job's event stream and objects.

Everything listens on 127.0.0.1; every process is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from multipass.v1 import jobs_pb2
from multipass_dev.local.process import LOOPBACK, ManagedProcess, free_port
from multipass_dev.stack.health import grpc_serving

ROOT = Path(__file__).resolve().parents[2]
#: Tiny random models shared with the other integration tests (built once, kept under .multipass/).
MODELS_ROOT = ROOT / ".multipass" / "test-models"
ADMIN_TOKEN = "chaos-admin-token"
#: Worker settings the fault tests rely on: a lost pass comes back after ACK_WAIT_S; a transient failure
#: is delivered MAX_DELIVER times in all (nak delays 1 s, then 2 s) before the worker gives up on the attempt.
ACK_WAIT_S = 5
MAX_DELIVER = 3
TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_PARTIAL,
    jobs_pb2.JOB_STATE_CANCELLED,
}


class TcpProxy:
    """Forwards loopback TCP connections to ``target``; :meth:`cut` refuses new ones and drops live ones.

    Unlike stopping the S3 server (moto keeps its objects in memory, so a restart loses them), cutting
    the proxy makes the endpoint unavailable while its data stays.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._thread.start()
        self._call(self._listen())

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, self.port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """From now on connections are refused, and open ones are reset."""
        self._call(self._cut())

    def restore(self) -> None:
        if self._server is None:
            self._call(self._listen())

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class EnvProcess(ManagedProcess):
    """A :class:`ManagedProcess` started with an environment of its own (a service's settings)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        super().__init__(name, argv, log_path)
        self.env = env

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )


@dataclass
class ServiceProcess:
    """One Multipass service run as ``python -m <module>`` with its own environment and log file."""

    name: str
    module: str
    env: dict[str, str]
    grpc_address: str
    log_dir: Path
    process: EnvProcess = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.process = EnvProcess(
            self.name, [sys.executable, "-m", self.module], self.log_dir / f"{self.name}.log", self.env
        )

    def spawn(self) -> None:
        self.process.spawn()
        self.starts += 1

    def wait_serving(self, timeout: float = 120.0) -> None:
        self.process.wait_ready(lambda: grpc_serving(self.grpc_address, timeout=1.0), timeout)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-pass without nak or goodbye."""
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(15.0)

    def log_text(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""


def worker_process(
    name: str, root: Path, nats_url: str, s3_endpoint: str, token: str, *, ack_wait: int | None = ACK_WAIT_S
) -> ServiceProcess:
    """A diffusion worker process on the tiny SD1.5 model; ``ack_wait=None`` keeps the worker's default."""
    from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE

    address = f"{LOOPBACK}:{free_port()}"
    env = service_env(
        MULTIPASS_MODEL_DIR=str(MODELS_ROOT),
        MULTIPASS_DIFFUSION_MODELS=SD15_MODEL,
        MULTIPASS_DIFFUSION_DEVICE="cpu",
        MULTIPASS_DIFFUSION_WORKING_SIZE=str(TINY_WORKING_SIZE),
        MULTIPASS_DIFFUSION_TORCH_THREADS="1",
        MULTIPASS_DIFFUSION_GRPC_ADDR=address,
        MULTIPASS_DIFFUSION_METRICS_PORT="0",
        MULTIPASS_DIFFUSION_TUNE_CACHE_DIR=str(root / f"tune-cache-{name}"),
        MULTIPASS_DIFFUSION_PROGRESS_INTERVAL_S="0.2",
        MULTIPASS_DIFFUSION_MAX_DELIVER=str(MAX_DELIVER),
        MULTIPASS_DIFFUSION_PASS_CACHE="off",
        MULTIPASS_DIFFUSION_WORKER_NAME=name,
        MULTIPASS_NATS_URL=nats_url,
        MULTIPASS_S3_ENDPOINT=s3_endpoint,
        MULTIPASS_INTERNAL_TOKEN=token,
    )
    if ack_wait is not None:
        env["MULTIPASS_DIFFUSION_ACK_WAIT_S"] = str(ack_wait)
    return ServiceProcess(name, "multipass_diffusion", env, address, root / "logs")


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def service_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULTIPASS_")}
    env.update({"PYTHONUNBUFFERED": "1", "MULTIPASS_LOG_LEVEL": "INFO"}, **values)
    return env


def new_token() -> str:
    return secrets.token_urlsafe(24)


def wait_until(predicate: Callable[[], object], timeout: float, message: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:g} s)")
        time.sleep(interval)


# --- nothing lost, nothing twice --------------------------------------------------------------------------


def check_event_stream(job: jobs_pb2.Job, events: list[jobs_pb2.JobEvent]) -> None:
    """The client's view of a finished job: sequences 1..n without gaps, every pass completed once."""
    sequences = [event.sequence for event in events]
    assert sequences == list(range(1, len(events) + 1)), sequences
    assert events[0].WhichOneof("event") == "accepted"
    assert events[-1].WhichOneof("event") == "finished"
    assert sum(1 for e in events if e.WhichOneof("event") == "finished") == 1
    completed = Counter(
        (e.pass_completed.image_index, e.pass_completed.pass_name)
        for e in events
        if e.WhichOneof("event") == "pass_completed"
    )
    assert all(count == 1 for count in completed.values()), completed
    started = Counter(
        (e.pass_started.image_index, e.pass_started.pass_name, e.pass_started.attempt)
        for e in events
        if e.WhichOneof("event") == "pass_started"
    )
    assert all(count == 1 for count in started.values()), started
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        expected = {
            (image.index, state.name)
            for image in job.images
            for state in image.passes
            if state.status == jobs_pb2.PASS_STATUS_COMPLETED
        }
        assert set(completed) == expected, (sorted(completed), sorted(expected))


def expected_objects(tenant: str, job: jobs_pb2.Job) -> set[str]:
    """Keys a finished job may hold: each completed pass's own output (once) and the per-person masks."""
    keys = {
        state.output.key
        for image in job.images
        for state in image.passes
        if state.output.key and f"/image-{image.index}/" in state.output.key
    }
    keys |= {mask.key for image in job.images for mask in image.masks.values()}
    return keys
