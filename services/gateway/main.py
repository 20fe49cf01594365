"""Wiring of the gateway: NATS, the object store, internal clients, orchestration, the public gRPC API.

``serve(settings)`` is what ``python -m multipass_gateway`` runs and what tests run in-process; the
returned handle has ``address``, ``port``, ``metrics_port``, the main ``components`` and ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from multipass import names
from multipass.bus import Bus
from multipass.grpc.dependencies import watch_dependencies
from multipass.grpc.server import Registration, RunningServer, start_grpc_server
from multipass.metrics import metrics_host_for
from multipass.metrics_endpoint import MetricsEndpoint
from multipass.ssrf import AddressPolicy
from multipass.store import ObjectStore
from multipass.v1 import admin_pb2_grpc, jobs_pb2_grpc
from multipass_gateway.api import admin_servicer, jobs_servicer, tunes_servicer
from multipass_gateway.api.views import public_job
from multipass_gateway.app.abandoned_passes import AbandonedPasses
from multipass_gateway.app.cancellation import Canceller
from multipass_gateway.app.default_layouts import DefaultLayouts
from multipass_gateway.app.deletion import JobDeleter
from multipass_gateway.app.job_end import JobEnd
from multipass_gateway.app.orchestrator import Orchestrator
from multipass_gateway.app.progress_gate import ProgressGate
from multipass_gateway.app.retention import JobRetention
from multipass_gateway.app.segmentation_steps import SegmentationSteps
from multipass_gateway.app.submission import Submitter
from multipass_gateway.app.submit_cleanup import SubmitCleanup
from multipass_gateway.app.sweeper import Sweeper
from multipass_gateway.app.tenant_removal import TenantRemoval
from multipass_gateway.app.uploads import Uploads
from multipass_gateway.domain.face_targets import FaceFilter
from multipass_gateway.infra.clients import InternalClients
from multipass_gateway.infra.diffusion_info import DiffusionInfo
from multipass_gateway.infra.fetch import Resolver, SafeHttp, system_resolve
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.object_copies import ObjectCopies
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.pending_budget import PendingBudget
from multipass_gateway.infra.queue_gauge import QueueGauge
from multipass_gateway.infra.replica_notes import ReplicaNotes
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.infra.tune_store import TuneStore
from multipass_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


@dataclass
class GatewayHandle:
    server: RunningServer
    bus: Bus
    clients: InternalClients
    job_end: JobEnd
    jobs: JobStore
    submit_cleanup: SubmitCleanup
    deleter: JobDeleter
    stop_event: asyncio.Event
    tasks: list[asyncio.Task]
    metrics_port: int
    _metrics: MetricsEndpoint | None = None
    components: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let the consumers finish their in-flight messages, then close connections."""
        await self.server.stop(grace)
        self.stop_event.set()
        _done, pending = await asyncio.wait(self.tasks, timeout=grace + 5) if self.tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.submit_cleanup.close()
        await self.deleter.close()
        await self.job_end.close()
        await self.jobs.close()
        await self.clients.close()
        await self.bus.close()
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.close()
        log.info("gateway stopped")


async def serve(settings: GatewaySettings, *, resolver: Resolver = system_resolve) -> GatewayHandle:
    """Connect, start the consumers and the sweeper, open the gRPC port."""
    bus = await Bus.connect(settings.nats.url, name="gateway")
    copies = ObjectCopies(settings.object_copies_bytes)
    clients = InternalClients(
        parser=settings.parser_target,
        segmentation=settings.segmentation_target,
        diffusion=settings.diffusion_target,
        internal_token=settings.internal_token,
        copies=copies,
    )
    stop_event = asyncio.Event()
    tasks: list[asyncio.Task] = []
    metrics = None
    try:
        await bus.ensure_topology(replicas=settings.nats.replicas)
        objects = ObjectStore.from_settings(settings.s3, public_endpoint=settings.s3_public_endpoint)
        await objects.ensure_buckets(names.OBJECT_BUCKETS)
        jobs_kv = await bus.kv(names.KV_JOBS)
        policy = AddressPolicy(
            allow_hosts=settings.fetch_allow.hosts, allow_networks=settings.fetch_allow.networks
        )
        http = SafeHttp(policy, resolver=resolver, trusted_callbacks=settings.callbacks.trusted_prefixes)
        notes = ReplicaNotes(bus)
        await notes.start()
        tenants = TenantStore(
            await bus.kv(names.KV_TENANTS),
            settings.api_key_pepper,
            cache_seconds=settings.auth_cache_seconds,
            notes=notes,
            stream_recheck_seconds=settings.stream_auth_recheck_seconds,
            tenant_max_streams=settings.tenant_max_streams,
        )
        scheduler = PassScheduler(
            bus,
            jobs_kv,
            tenant_limit=settings.limits.tenant_max_passes_in_flight,
            global_limit=settings.limits.max_passes_in_flight,
            interval=settings.scheduler_interval_seconds,
            resync_interval=settings.scheduler_resync_seconds,
            notes=notes,
            copies=copies,
            own_limits=tenants.limits,
            tenant_metrics=settings.tenant_metrics,
        )
        jobs = JobStore(bus, jobs_kv, dispatch=scheduler.enqueue)
        budget = PendingBudget(
            jobs_kv, settings.limits, refresh_interval=settings.budget_refresh_seconds, notes=notes
        )
        tunes = TuneStore(await bus.kv(names.KV_TUNES), objects, http, settings.limits)
        job_end = JobEnd(
            jobs=jobs,
            jobs_kv=jobs_kv,
            budget=budget,
            scheduler=scheduler,
            http=http,
            settings=settings,
            public_view=lambda record: public_job(record, objects, settings.presign_expiry_seconds),
        )
        info = DiffusionInfo(clients.info, settings.info_ttl_seconds, store=jobs_kv)
        submit_cleanup = SubmitCleanup(jobs=jobs, budget=budget, objects=objects)
        layouts = DefaultLayouts()
        submitter = Submitter(
            settings=settings,
            limits=tenants.limits,
            layouts=layouts,
            cleanup=submit_cleanup,
            clients=clients,
            info=info,
            tunes=tunes,
            jobs=jobs,
            objects=objects,
            http=http,
            idempotency=await bus.kv(names.KV_IDEMPOTENCY),
            budget=budget,
            job_end=job_end,
        )
        canceller = Canceller(bus=bus, jobs=jobs, scheduler=scheduler, job_end=job_end)
        deleter = JobDeleter(
            bus=bus,
            jobs=jobs,
            canceller=canceller,
            scheduler=scheduler,
            budget=budget,
            objects=objects,
            idempotency=await bus.kv(names.KV_IDEMPOTENCY),
        )
        orchestrator = Orchestrator(
            bus,
            jobs,
            job_end,
            scheduler,
            max_attempts=settings.limits.pass_max_attempts,
            concurrency=settings.event_concurrency,
            copies=copies,
            progress_gate=ProgressGate(settings.progress_interval_seconds),
        )
        segmentation_steps = SegmentationSteps(
            bus,
            jobs,
            clients,
            on_completed=orchestrator.apply_published,
            copies=copies,
            face_filter=FaceFilter(
                min_area_ratio=settings.pass_tuning.faces_min_area_ratio,
                max_count=settings.pass_tuning.faces_max_count,
            ),
        )
        sweeper = Sweeper(
            jobs=jobs,
            jobs_kv=jobs_kv,
            budget=budget,
            scheduler=scheduler,
            job_end=job_end,
            interval=settings.sweep_interval_seconds,
        )
        uploads = Uploads(
            objects,
            ttl_seconds=settings.upload_ttl_seconds,
            sweep_seconds=settings.upload_sweep_seconds,
            tenant_max_uploads=settings.limits.tenant_max_uploads,
            limits=tenants.limits,
            max_receiving=settings.limits.max_image_uploads,
            retry_after_seconds=settings.limits.retry_after_seconds,
        )
        retention = JobRetention(
            jobs=jobs,
            jobs_kv=jobs_kv,
            deleter=deleter,
            retention_seconds=settings.job_retention_seconds,
            interval=settings.retention_sweep_seconds,
        )
        queue_gauge = QueueGauge(bus, settings.queue_metrics_interval_seconds)
        abandoned_passes = AbandonedPasses(bus, orchestrator)
        tasks = [
            asyncio.create_task(orchestrator.run(stop_event), name="orchestrator"),
            asyncio.create_task(scheduler.run(stop_event), name="pass-scheduler"),
            asyncio.create_task(budget.run(stop_event), name="budget-mirror"),
            asyncio.create_task(segmentation_steps.run(stop_event), name="segmentation-steps"),
            asyncio.create_task(abandoned_passes.run(stop_event), name="abandoned-passes"),
            asyncio.create_task(sweeper.run(stop_event), name="sweeper"),
            asyncio.create_task(uploads.run(stop_event), name="upload-expiry"),
            asyncio.create_task(retention.run(stop_event), name="job-retention"),
            asyncio.create_task(queue_gauge.run(stop_event), name="queue-gauge"),
            asyncio.create_task(tenants.run(stop_event), name="stream-key-checks"),
            asyncio.create_task(info.run(stop_event), name="diffusion-info"),
        ]
        registrations = [
            Registration(
                jobs_pb2_grpc.add_JobsServicer_to_server,
                jobs_servicer.JobsServicer(
                    tenants=tenants,
                    submitter=submitter,
                    canceller=canceller,
                    deleter=deleter,
                    jobs=jobs,
                    objects=objects,
                    uploads=uploads,
                    bus=bus,
                    settings=settings,
                ),
                jobs_servicer.SERVICE_NAME,
            ),
            Registration(
                jobs_pb2_grpc.add_TunesServicer_to_server,
                tunes_servicer.TunesServicer(
                    tenants=tenants,
                    tunes=tunes,
                    objects=objects,
                    presign_expiry_seconds=settings.presign_expiry_seconds,
                ),
                tunes_servicer.SERVICE_NAME,
            ),
            Registration(
                admin_pb2_grpc.add_AdminServicer_to_server,
                admin_servicer.AdminServicer(
                    tenants=tenants,
                    admin_token=settings.admin_token,
                    removal=TenantRemoval(
                        tenants=tenants,
                        jobs=jobs,
                        deleter=deleter,
                        tunes=tunes,
                        objects=objects,
                        auth_cache_seconds=settings.auth_cache_seconds,
                        usage=job_end.usage,
                        layouts=layouts,
                    ),
                ),
                admin_servicer.SERVICE_NAME,
            ),
        ]
        metrics_port = -1
        if settings.metrics_port >= 0:
            metrics = MetricsEndpoint.start(settings.metrics_port, metrics_host_for(settings.grpc_address))
            metrics_port = metrics.port
        server = await start_grpc_server(settings.grpc_address, registrations)
        dependencies = {"nats": lambda: bus.is_connected}
        tasks.append(
            asyncio.create_task(
                watch_dependencies(server, dependencies, stop_event), name="dependency-health"
            )
        )
    except BaseException:
        stop_event.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if metrics is not None:
            metrics.close()
        await clients.close()
        await bus.close()
        raise
    handle = GatewayHandle(
        server=server,
        bus=bus,
        clients=clients,
        job_end=job_end,
        jobs=jobs,
        submit_cleanup=submit_cleanup,
        deleter=deleter,
        stop_event=stop_event,
        tasks=tasks,
        metrics_port=metrics_port,
        _metrics=metrics,
        components={
            "jobs": jobs,
            "tenants": tenants,
            "tunes": tunes,
            "objects": objects,
            "budget": budget,
            "scheduler": scheduler,
        },
    )
    log.info(
        "gateway serving",
        extra={"port": server.port, "metrics_port": metrics_port, "settings": repr(settings)},
    )
    return handle
