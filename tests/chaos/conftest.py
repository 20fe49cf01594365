"""A Multipass cluster for fault injection, on loopback: a real nats-server (file storage), the session's moto
S3 server, the prompt parser, segmentation and two diffusion workers as processes on the tiny models
(the workers reach S3 through a proxy the tests can cut), and the gateway in-process (restartable).
Internal calls carry MULTIPASS_INTERNAL_TOKEN, as in the local stack.

The processes start once per module (about 15 s on 2 cores); each test gets a fresh gateway and its own
tenants, and finds both workers serving.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from chaos_support import (
    ADMIN_TOKEN,
    MODELS_ROOT,
    TERMINAL,
    ServiceProcess,
    TcpProxy,
    bearer,
    new_token,
    service_env,
    worker_process,
)

from multipass.bus import Bus
from multipass.connections import NatsSettings, S3Settings
from multipass.store import ObjectStore
from multipass.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from multipass_dev.local import NatsServerProcess, S3ServerProcess
from multipass_dev.local.process import LOOPBACK, reserve_ports

# The fake worker and gateway wiring of the integration tier, reused by the load test.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

WORKER_NAMES = ("w1", "w2")


@dataclass
class Cluster:
    root: Path
    nats: NatsServerProcess
    s3: S3ServerProcess
    s3_proxy: TcpProxy
    token: str
    parser: ServiceProcess
    segmentation: ServiceProcess
    workers: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def s3_settings(self) -> S3Settings:
        return S3Settings(endpoint=self.s3.endpoint)

    def services(self) -> list[ServiceProcess]:
        return [self.parser, self.segmentation, *self.workers.values()]

    def ensure_running(self, timeout: float = 180.0) -> None:
        """Restart whatever a previous test killed, restore S3 and NATS, and wait until all serve."""
        self.s3_proxy.restore()
        if not self.nats.running:
            self.nats.restart()
        for service in self.services():
            if not service.running:
                service.spawn()
        for service in self.services():
            service.wait_serving(timeout)


@pytest.fixture(scope="module")
def cluster(s3_server: S3ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from multipass_dev.tiny_models import build_tiny_models

    build_tiny_models(MODELS_ROOT)
    root = tmp_path_factory.mktemp("chaos")
    s3_server.resume()
    if not s3_server.running:
        s3_server.restart()
    s3_server.reset()
    nats = NatsServerProcess.start(root / "nats")
    proxy = TcpProxy(LOOPBACK, s3_server.port)
    token = new_token()
    parser_port, segmentation_port = reserve_ports(2)
    parser_address = f"{LOOPBACK}:{parser_port}"
    segmentation_address = f"{LOOPBACK}:{segmentation_port}"
    cluster = Cluster(
        root=root,
        nats=nats,
        s3=s3_server,
        s3_proxy=proxy,
        token=token,
        parser=ServiceProcess(
            "prompt-parser",
            "multipass_prompt_parser",
            service_env(
                MULTIPASS_PARSER_GRPC_ADDR=parser_address,
                MULTIPASS_PARSER_METRICS_PORT="0",
                MULTIPASS_NATIVE_SIZE="256",
                MULTIPASS_INTERNAL_TOKEN=token,
            ),
            parser_address,
            root / "logs",
        ),
        segmentation=ServiceProcess(
            "segmentation",
            "multipass_segmentation",
            service_env(
                MULTIPASS_MODEL_DIR=str(MODELS_ROOT),
                MULTIPASS_SEGMENTATION_GRPC_ADDR=segmentation_address,
                MULTIPASS_SEGMENTATION_METRICS_PORT="0",
                MULTIPASS_SEGMENTATION_TORCH_THREADS="1",
                MULTIPASS_S3_ENDPOINT=s3_server.endpoint,
                MULTIPASS_INTERNAL_TOKEN=token,
            ),
            segmentation_address,
            root / "logs",
        ),
        workers={name: worker_process(name, root, nats.url, proxy.endpoint, token) for name in WORKER_NAMES},
    )
    try:
        for service in cluster.services():
            service.spawn()
        cluster.ensure_running()
        yield cluster
    finally:
        for service in cluster.services():
            service.process.signal(signal.SIGTERM)  # all drain at once
        for service in cluster.services():
            service.stop()
        proxy.close()
        nats.stop()


class Gateway:
    """The in-process gateway on the cluster, with the calls the tests make."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.handle = None
        self.channel: grpc.aio.Channel | None = None
        self.overrides: dict = {}

    def settings(self):
        from multipass_gateway.settings import GatewaySettings, Limits

        values = dict(
            grpc_address="127.0.0.1:0",
            metrics_port=-1,
            nats=NatsSettings(url=self.cluster.nats.url),
            s3=self.cluster.s3_settings,
            parser_target=self.cluster.parser.grpc_address,
            segmentation_target=self.cluster.segmentation.grpc_address,
            diffusion_target=self.cluster.workers["w1"].grpc_address,
            internal_token=self.cluster.token,
            admin_token=ADMIN_TOKEN,
            sweep_interval_seconds=1.0,
            scheduler_interval_seconds=0.2,
            info_ttl_seconds=3600.0,
            limits=Limits(fetch_timeout_seconds=5.0),
        )
        values.update(self.overrides)
        return GatewaySettings(**values)

    async def start(self, **overrides) -> None:
        from multipass_gateway.main import serve

        self.overrides.update(overrides)
        self.handle = await serve(self.settings())
        self.channel = grpc.aio.insecure_channel(self.handle.address)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.handle is not None:
            await self.handle.stop(grace=1.0)
            self.handle = None

    @property
    def jobs(self) -> jobs_pb2_grpc.JobsStub:
        return jobs_pb2_grpc.JobsStub(self.channel)

    @property
    def tunes(self) -> jobs_pb2_grpc.TunesStub:
        return jobs_pb2_grpc.TunesStub(self.channel)

    async def tenant(self, name: str) -> admin_pb2.CreateTenantResponse:
        return await admin_pb2_grpc.AdminStub(self.channel).CreateTenant(
            admin_pb2.CreateTenantRequest(name=name), metadata=[("x-multipass-admin-token", ADMIN_TOKEN)]
        )

    async def submit(self, key: str, prompt: str, **params: str) -> str:
        request = jobs_pb2.SubmitJobRequest(prompt=prompt, params={"w": "256", "h": "256", **params})
        return (await self.jobs.SubmitJob(request, metadata=bearer(key), timeout=30)).job_id

    async def get(self, key: str, job_id: str) -> jobs_pb2.Job:
        return await self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(key), timeout=10)

    async def wait(self, key: str, job_id: str, timeout: float = 90.0) -> jobs_pb2.Job:
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = await self.get(key, job_id)
                if job.state in TERMINAL:
                    return job
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout} s"
            await asyncio.sleep(0.2)

    async def events(self, key: str, job_id: str, after: int = 0) -> list[jobs_pb2.JobEvent]:
        call = self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after), metadata=bearer(key), timeout=60
        )
        return [event async for event in call]


@pytest.fixture
async def gateway(cluster: Cluster) -> AsyncIterator[Gateway]:
    await asyncio.to_thread(cluster.ensure_running)
    running = Gateway(cluster)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def observer(cluster: Cluster) -> AsyncIterator[Bus]:
    """A NATS connection of the test's own, to watch pass events and consumers."""
    bus = await Bus.connect(cluster.nats.url, name="chaos-observer")
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def objects(cluster: Cluster) -> ObjectStore:
    return ObjectStore.from_settings(cluster.s3_settings)
