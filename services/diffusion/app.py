"""Wiring of the diffusion worker: gRPC (Info + health), metrics, NATS, object store, engine, consumer.

``serve(settings)`` is what ``python -m multipass_diffusion`` runs and what tests start in-process. Health
reports SERVING only once every served model is loaded and warmed up; the JetStream consumers start
after that. ``stop()`` shuts down in order: stop taking work (passes in flight finish and are decided),
unsubscribe, close NATS, stop gRPC with a grace period, release the device thread.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from multipass import names
from multipass.bus import Bus
from multipass.grpc.dependencies import watch_dependencies
from multipass.grpc.internal_auth import InternalTokenInterceptor
from multipass.grpc.server import Registration, RunningServer, start_grpc_server
from multipass.metrics import metrics_host_for
from multipass.metrics_endpoint import MetricsEndpoint
from multipass.model_catalog.features import log_report
from multipass.names import OBJECT_BUCKETS
from multipass.store import ObjectStore
from multipass.v1 import diffusion_pb2_grpc
from multipass_diffusion.engine import Engine
from multipass_diffusion.pass_cache import MemoryPassCache, StorePassCache
from multipass_diffusion.servicer import DiffusionServicer, model_features
from multipass_diffusion.settings import DiffusionSettings
from multipass_diffusion.worker import DiffusionWorker

log = logging.getLogger(__name__)
SERVICE_NAME = "multipass.v1.Diffusion"


@dataclass
class DiffusionService:
    settings: DiffusionSettings
    engine: Engine
    grpc: RunningServer
    metrics_port: int
    bus: Bus
    store: ObjectStore
    worker: DiffusionWorker
    executor: ThreadPoolExecutor
    metrics: MetricsEndpoint
    health_stop: asyncio.Event
    health_task: asyncio.Task

    @property
    def grpc_address(self) -> str:
        return self.grpc.address

    async def stop(self, grace: float = 5.0) -> None:
        await self.grpc.set_serving(False)
        self.health_stop.set()
        await self.health_task
        await self.worker.stop()
        await self.bus.close()
        await self.grpc.stop(grace)
        self.executor.shutdown(wait=True)
        self.metrics.close()
        log.info("diffusion worker stopped")


async def serve(settings: DiffusionSettings) -> DiffusionService:
    loop = asyncio.get_running_loop()
    # One thread per device: every model call of this worker runs on it, in order.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion-device")
    store = ObjectStore.from_settings(settings.s3)
    cache = {
        "store": lambda: StorePassCache(store, loop),
        "memory": lambda: MemoryPassCache(settings.pass_cache_entries),
        "off": lambda: None,
    }[settings.pass_cache]()
    engine = Engine(settings, cache=cache)
    grpc = await start_grpc_server(
        settings.grpc_addr,
        [
            Registration(
                diffusion_pb2_grpc.add_DiffusionServicer_to_server, DiffusionServicer(engine), SERVICE_NAME
            )
        ],
        serving=False,
        extra_interceptors=[InternalTokenInterceptor(settings.internal_token)]
        if settings.internal_token
        else [],
    )
    bus = metrics = None
    try:
        metrics = MetricsEndpoint.start(settings.metrics_port, metrics_host_for(settings.grpc_addr))
        log_report(model_features(engine), log)
        await loop.run_in_executor(executor, engine.load)
        await store.ensure_buckets(OBJECT_BUCKETS)
        bus = await Bus.connect(settings.nats.url, name=f"diffusion-{settings.worker_name}")
        # The gateway owns the streams; this worker's NATS user may only look them up (docs/KUBERNETES.md).
        await bus.await_streams((names.STREAM_PASSES, names.STREAM_EVENTS), replicas=settings.nats.replicas)
        worker = DiffusionWorker(settings, engine, bus, store, executor)
        await worker.start()
    except BaseException:
        if bus is not None:
            await bus.close()
        await grpc.stop(0)
        executor.shutdown(wait=False)
        if metrics is not None:
            metrics.close()
        raise
    await grpc.set_serving(True)
    health_stop = asyncio.Event()
    health_task = asyncio.create_task(
        watch_dependencies(grpc, {"nats": lambda: bus.is_connected}, health_stop), name="dependency-health"
    )
    log.info(
        "diffusion worker serving",
        extra={
            "models": list(engine.runtimes),
            "grpc": grpc.address,
            "metrics_port": metrics.port,
            "device": engine.device,
        },
    )
    return DiffusionService(
        settings, engine, grpc, metrics.port, bus, store, worker, executor, metrics, health_stop, health_task
    )
