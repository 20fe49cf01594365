"""A stand-in diffusion worker whose pass work is instant, for measuring the control plane.

``python -m multipass_bench.standin_worker`` serves ``Diffusion.Info`` (one SD1.5-family model, no
optional components) on ``MULTIPASS_BENCH_STANDIN_GRPC_ADDR`` and consumes that model's pass requests
from JetStream exactly where a diffusion worker would (durable ``diffusion-<model>``). Each request is
answered at once, as a worker answers a pass-cache hit: a ``started`` event, then ``completed`` with a
tiny image stored once at start-up, then ack. Settings: ``MULTIPASS_NATS_URL``, ``MULTIPASS_S3_*``,
``MULTIPASS_BENCH_STANDIN_MODEL`` (default ``sd15-tiny``), ``MULTIPASS_BENCH_STANDIN_SIZE`` (default 256),
``MULTIPASS_BENCH_STANDIN_PROGRESS_EVENTS`` (default 0: progress events between ``started`` and
``completed``, as a real worker reports its steps, to measure what they cost the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from multipass import names
from multipass.bus import Ack, Bus, Delivery, publish_pass_event
from multipass.config import EnvReader
from multipass.connections import NatsSettings, S3Settings
from multipass.grpc.server import Registration, start_grpc_server
from multipass.names import OBJECT_BUCKETS
from multipass.store import ObjectStore
from multipass.v1 import diffusion_pb2, diffusion_pb2_grpc, events_pb2

log = logging.getLogger("multipass_bench.standin")
SERVICE_NAME = "multipass.v1.Diffusion"
IMAGE_KEY = "bench/standin-output.png"


class StandInInfo(diffusion_pb2_grpc.DiffusionServicer):
    def __init__(self, model: str):
        self.model = model

    async def Info(self, request, context):
        return diffusion_pb2.InfoResponse(
            models=[self.model], model_family="sd15", device="cpu", dtype="float32", working_size=64
        )


class StandIn:
    def __init__(self, bus: Bus, output: object, progress_events: int = 0):
        self.bus = bus
        self.output = output
        self.progress_events = progress_events
        self.handled = 0

    async def handle(self, delivery: Delivery):
        request = delivery.parse(diffusion_pb2.PassRequest)
        await publish_pass_event(
            self.bus,
            request,
            names.EVENT_STARTED,
            started=events_pb2.PassStarted(worker="bench-standin", steps_total=request.spec.steps),
        )
        total = max(request.spec.steps, self.progress_events)
        for report in range(1, self.progress_events + 1):
            step = -(-report * total // self.progress_events)  # spread over the pass's steps
            await publish_pass_event(
                self.bus,
                request,
                names.EVENT_PROGRESS,
                suffix=f"{names.EVENT_PROGRESS}:{step}",
                progress=events_pb2.PassProgress(step=step, steps_total=total),
            )
        result = diffusion_pb2.PassResult(output=self.output, duration_seconds=0.0, spec_hash="0" * 64)
        await publish_pass_event(
            self.bus, request, names.EVENT_COMPLETED, completed=events_pb2.PassCompleted(result=result)
        )
        self.handled += 1
        return Ack()


async def serve(environ=None) -> None:
    from PIL import Image

    reader = EnvReader(environ)
    nats = NatsSettings.from_env(reader)
    s3 = S3Settings.from_env(reader)
    address = reader.address("BENCH_STANDIN_GRPC_ADDR", "127.0.0.1:0")
    model = reader.str("BENCH_STANDIN_MODEL", "sd15-tiny")
    size = reader.int("BENCH_STANDIN_SIZE", 256, min=8, max=4096)
    progress_events = reader.int("BENCH_STANDIN_PROGRESS_EVENTS", 0, min=0, max=200)
    reader.check()
    bus = await Bus.connect(nats.url, name="bench-standin")
    await bus.ensure_topology()
    store = ObjectStore.from_settings(s3)
    await store.ensure_buckets(OBJECT_BUCKETS)
    output = await store.put_image("multipass-jobs", IMAGE_KEY, Image.new("RGB", (size, size), (40, 90, 160)))
    standin = StandIn(bus, output, progress_events)
    server = await start_grpc_server(
        address,
        [Registration(diffusion_pb2_grpc.add_DiffusionServicer_to_server, StandInInfo(model), SERVICE_NAME)],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("stand-in worker serving %s on %s", model, server.address)
    try:
        await bus.consume(
            stream=names.STREAM_PASSES,
            durable=names.diffusion_durable(model),
            filter_subject=names.diffusion_pass_subject(model),
            handler=standin.handle,
            ack_wait=30.0,
            max_deliver=3,
            max_ack_pending=512,
            stop=stop,
            batch=32,
            concurrency=32,
            fetch_timeout=0.2,
        )
    finally:
        log.info("stand-in worker stopping after %d passes", standin.handled)
        with contextlib.suppress(Exception):
            await server.stop(1.0)
        await bus.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
