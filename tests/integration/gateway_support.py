"""The gateway's integration stack: real nats-server and S3 (conftest), the real prompt parser and
segmentation services in-process, a fake Diffusion.Info server and a fake diffusion worker loop that
answers pass requests from JetStream with real images written to the store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from PIL import Image

from multipass import names
from multipass.bus import Ack, Bus, Delivery, Term, publish_pass_event
from multipass.connections import NatsSettings
from multipass.copies import object_copy
from multipass.grpc.server import Registration, start_grpc_server
from multipass.store import ObjectStore
from multipass.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    diffusion_pb2,
    diffusion_pb2_grpc,
    events_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
)
from multipass_gateway.main import serve as serve_gateway
from multipass_gateway.settings import CallbackSettings, GatewaySettings, Limits
from multipass_prompt_parser.app import serve as serve_parser
from multipass_prompt_parser.settings import ParserSettings

MODEL = "tiny-sd15"
ADMIN_TOKEN = "admin-token-for-tests"
SIGNING_KEY = "callback-signing-key-for-tests"
TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_PARTIAL,
    jobs_pb2.JOB_STATE_CANCELLED,
}


def safetensors_bytes() -> bytes:
    header = json.dumps({"lora_unet.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\x00" * 8


class FakeDiffusionInfo(diffusion_pb2_grpc.DiffusionServicer):
    """Diffusion.Info of workers serving ``models`` (model name → family)."""

    def __init__(
        self,
        capabilities: list[str],
        models: dict[str, str] | None = None,
        native_sizes: dict[str, int] | None = None,
    ):
        self.capabilities = capabilities
        self.models = models or {MODEL: "sd15"}
        #: Native sizes by model; none reported leaves the parser's own (256 in these tests).
        self.native_sizes = native_sizes or {}

    async def Info(self, request, context):
        return diffusion_pb2.InfoResponse(
            models=list(self.models),
            model_family=",".join(sorted(set(self.models.values()))),
            model_families=self.models,
            model_native_sizes=self.native_sizes,
            device="cpu",
            dtype="float32",
            capabilities=self.capabilities,
            working_size=256,
        )


def batch_members(request: diffusion_pb2.PassRequest) -> list[diffusion_pb2.PassRequest]:
    """The lead request and one request per ``batch`` member (image, attempt, seed, output key replaced)."""
    members = []
    for member in [None, *request.batch]:
        one = diffusion_pb2.PassRequest()
        one.CopyFrom(request)
        one.ClearField("batch")
        if member is not None:
            one.image_index, one.attempt, one.output_key = (
                member.image_index,
                member.attempt,
                member.output_key,
            )
            one.spec.seed = member.seed
        members.append(one)
    return members


class FakeWorker:
    """Answers pass requests like a diffusion worker: started, progress per step, an image, completed."""

    def __init__(self, bus: Bus, store: ObjectStore):
        self.bus = bus
        self.store = store
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: dict[str, common_pb2.ErrorDetail] = {}
        self.seen: list[diffusion_pb2.PassRequest] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def handle(self, delivery: Delivery):
        request = delivery.parse(diffusion_pb2.PassRequest)
        await self.gate.wait()
        self.seen.append(request)
        decision = Ack()
        for member in batch_members(request):  # a batched base request: each member is a pass of its own
            decision = await self._answer(member)
        return decision

    async def _answer(self, request: diffusion_pb2.PassRequest):
        spec = request.spec
        steps = max(1, spec.steps)
        started = events_pb2.PassStarted(worker="fake", steps_total=steps)
        await publish_pass_event(self.bus, request, "started", started=started)
        for step in range(1, steps + 1):
            progress = events_pb2.PassProgress(step=step, steps_total=steps)
            await publish_pass_event(
                self.bus, request, "progress", suffix=f"progress:{step}", progress=progress
            )
        if request.pass_name in self.fail:
            failed = events_pb2.PassFailed(error=self.fail[request.pass_name], retriable=False)
            await publish_pass_event(self.bus, request, "failed", failed=failed)
            return Term("told to fail")
        if spec.image.key:
            base = await self.store.get_image(spec.image)
            image = base.resize((spec.width or base.width, spec.height or base.height))
        else:
            image = Image.new("RGB", (spec.width or 256, spec.height or 256), (40, 90, 160))
        image.paste((len(self.seen) * 37 % 255, 200, 30), (0, 0, 16, 16))
        output = await self.store.put_image(request.output_bucket, request.output_key, image)
        result = diffusion_pb2.PassResult(output=output, duration_seconds=0.01, spec_hash="f" * 64)
        completed = events_pb2.PassCompleted(result=result)
        if request.copy_output:  # as the worker does: a copy of the stored output rides on the event
            data = await self.store.get_bytes(output.bucket, output.key)
            completed.output_copy.CopyFrom(object_copy(output, data))
        await publish_pass_event(self.bus, request, "completed", completed=completed)
        return Ack()

    def start(self) -> None:
        self.stop.clear()
        self.task = asyncio.create_task(
            self.bus.consume(
                stream=names.STREAM_PASSES,
                durable=names.diffusion_durable(MODEL),
                filter_subject=names.diffusion_pass_subject(MODEL),
                handler=self.handle,
                ack_wait=30.0,
                max_deliver=3,
                max_ack_pending=16,
                stop=self.stop,
                batch=4,
                concurrency=4,
                fetch_timeout=0.3,
            )
        )

    async def close(self) -> None:
        self.gate.set()
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)


@dataclasses.dataclass
class Stack:
    nats_url: str
    s3_settings: object
    parser_address: str
    segmentation_address: str
    info_address: str
    store: ObjectStore
    bus: Bus
    worker: FakeWorker
    gateway: object = None
    channel: grpc.aio.Channel | None = None

    def settings(self, **overrides) -> GatewaySettings:
        values = dict(
            grpc_address="127.0.0.1:0",
            metrics_port=-1,
            nats=NatsSettings(url=self.nats_url),
            s3=self.s3_settings,
            parser_target=self.parser_address,
            segmentation_target=self.segmentation_address,
            diffusion_target=self.info_address,
            admin_token=ADMIN_TOKEN,
            callbacks=CallbackSettings(
                signing_key=SIGNING_KEY, max_attempts=3, backoff_seconds=0.05, timeout_seconds=5.0
            ),
            sweep_interval_seconds=0.5,
            queue_metrics_interval_seconds=0.5,
            info_ttl_seconds=60.0,
            limits=Limits(fetch_timeout_seconds=5.0),
        )
        values.update(overrides)
        return GatewaySettings(**values)

    async def start_gateway(self, **overrides) -> None:
        self.gateway = await serve_gateway(self.settings(**overrides))
        self.channel = grpc.aio.insecure_channel(self.gateway.address)

    async def stop_gateway(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.gateway is not None:
            await self.gateway.stop(grace=1.0)
            self.gateway = None

    @property
    def jobs(self) -> jobs_pb2_grpc.JobsStub:
        return jobs_pb2_grpc.JobsStub(self.channel)

    @property
    def tunes(self) -> jobs_pb2_grpc.TunesStub:
        return jobs_pb2_grpc.TunesStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel)

    async def tenant(self, name: str = "acme") -> admin_pb2.CreateTenantResponse:
        return await self.admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name=name), metadata=[("x-multipass-admin-token", ADMIN_TOKEN)]
        )


async def rpc_error(awaitable) -> grpc.aio.AioRpcError:
    """The gRPC error an awaited call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def wait_for_job(stack: Stack, job_id: str, key: str, timeout: float = 30.0) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(key))
        if job.state in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job still {jobs_pb2.JobState.Name(job.state)} after {timeout} s"
        await asyncio.sleep(0.1)


async def register_tune(stack: Stack, key: str, *, family: str = "sd15") -> jobs_pb2.Tune:
    async def parts():
        yield jobs_pb2.RegisterTuneRequest(
            metadata=jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family=family)
        )
        yield jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes())

    return await stack.tunes.RegisterTune(parts(), metadata=bearer(key))


@pytest.fixture(scope="session", name="segmentation_models")
def segmentation_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from multipass_dev.tiny_models import segmentation as tiny

    root = tmp_path_factory.getbasetemp() / "tiny-segmentation-models"
    tiny.build(root)
    return root


@pytest.fixture(name="capabilities")
def capabilities_fixture() -> list[str]:
    return ["controlnet:pose", "pass:base", "pass:faces", "pass:person", "pass:upscale", "upscaler"]


def served_native_sizes(request: pytest.FixtureRequest) -> dict[str, int]:
    """Native sizes the fake Diffusion.Info reports: the test's ``served_native_sizes`` argument, else none."""
    try:
        return request.getfixturevalue("served_native_sizes")
    except pytest.FixtureLookupError:
        return {}


def served_models(request: pytest.FixtureRequest) -> dict[str, str]:
    """Models the fake Diffusion.Info says the workers serve, with their families: the test's
    ``served_models`` argument when it has one (e.g. parametrized), else the tiny SD1.5 model."""
    try:
        return request.getfixturevalue("served_models")
    except pytest.FixtureLookupError:
        return {MODEL: "sd15"}


@pytest.fixture(name="stack")
async def stack_fixture(
    request, nats_server, s3_settings, store, bus, segmentation_models, capabilities
) -> AsyncIterator[Stack]:
    from multipass_segmentation.app import serve as serve_segmentation
    from multipass_segmentation.settings import SegmentationSettings

    parser = await serve_parser(ParserSettings(grpc_addr="127.0.0.1:0", metrics_port=0, native_size=256))
    segmentation = await serve_segmentation(
        SegmentationSettings(
            model_dir=segmentation_models, s3=s3_settings, grpc_addr="127.0.0.1:0", metrics_port=0
        ),
        store=store,
    )
    info = await start_grpc_server(
        "127.0.0.1:0",
        [
            Registration(
                diffusion_pb2_grpc.add_DiffusionServicer_to_server,
                FakeDiffusionInfo(capabilities, served_models(request), served_native_sizes(request)),
                "multipass.v1.Diffusion",
            )
        ],
    )
    worker = FakeWorker(bus, store)
    worker.start()
    running = Stack(
        nats_url=nats_server.url,
        s3_settings=s3_settings,
        parser_address=parser.address,
        segmentation_address=segmentation.address,
        info_address=info.address,
        store=store,
        bus=bus,
        worker=worker,
    )
    try:
        yield running
    finally:
        await running.stop_gateway()
        await worker.close()
        await info.stop(0.5)
        await segmentation.stop(0.5)
        await parser.stop(0.5)


class ImageServer:
    """Serves one image on loopback (a job's input image, a tune's reference face). ``held``: each answer
    waits until :attr:`release` is set (a fetch that takes long), at the latest on close."""

    def __init__(self, data: bytes, *, held: bool = False):
        owner = self
        self.hits = 0
        self.release = threading.Event()
        if not held:
            self.release.set()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.hits += 1
                owner.release.wait(20)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/photo.png"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
