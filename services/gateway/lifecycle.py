"""What happens around a job's end, and the background chores of a gateway replica.

* :meth:`JobLifecycle.finished` runs once a transition ended a job: metrics, the callback (marker
  ``callback.<tenant>.<job_id>`` until its outcome is recorded) and the end of the job's pending-work
  marker.
* The sweeper publishes outboxes left behind by a crash, finishes what a crashed replica did not
  (markers of ended jobs, callbacks whose claim expired, scheduler entries of ended passes) and so makes
  a restart lose nothing.
* The queue gauge reads JetStream consumer info of the pass work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from nats.js.kv import KeyValue

from multipass import subjects
from multipass.bus import Bus, nats_errors
from multipass.errors import MultipassError
from multipass.store import ObjectStore
from multipass.v1 import events_pb2, jobs_pb2
from multipass_gateway import gateway_metrics, job_state, kv
from multipass_gateway.budget import PendingBudget
from multipass_gateway.callbacks import CallbackSender
from multipass_gateway.fetch import SafeHttp
from multipass_gateway.job_store import JobStore
from multipass_gateway.scheduler import PassScheduler
from multipass_gateway.settings import GatewaySettings
from multipass_gateway.views import public_job

log = logging.getLogger(__name__)

#: An outbox untouched this long is published by the sweeper.
STALE_OUTBOX_SECONDS = 5.0


def callback_key(tenant: str, job_id: str) -> str:
    return f"callback.{tenant}.{job_id}"


class JobLifecycle:
    def __init__(
        self,
        *,
        bus: Bus,
        jobs: JobStore,
        jobs_kv: KeyValue,
        budget: PendingBudget,
        objects: ObjectStore,
        http: SafeHttp,
        settings: GatewaySettings,
        scheduler: PassScheduler | None = None,
    ):
        self.bus = bus
        self.scheduler = scheduler
        self.jobs = jobs
        self._kv = jobs_kv
        self.budget = budget
        self.objects = objects
        self.settings = settings
        self._tasks: set[asyncio.Task] = set()
        self.callbacks = CallbackSender(
            http,
            settings.callbacks,
            claim=self._claim_callback,
            record_outcome=self._record_callback,
            load_job=lambda record: public_job(record, objects, settings.presign_expiry_seconds),
        )

    # the end of a job ----------------------------------------------------------------------------

    async def finished(self, record: events_pb2.JobRecord, *, count: bool = True) -> None:
        """Called after the transition that ended the job was written and its outbox published."""
        job = record.job
        state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        if count:
            gateway_metrics.JOBS_FINISHED.labels(state=state).inc()
            if job.HasField("finished_at"):
                duration = (job.finished_at.ToDatetime() - job.created_at.ToDatetime()).total_seconds()
                gateway_metrics.JOB_DURATION.observe(max(0.0, duration))
        if job.callback_url and not job.callback_outcome:
            with nats_errors("mark callback"):
                await self._kv.put(callback_key(record.tenant, job.job_id), b"1")
            self.schedule_callback(record.tenant, job.job_id)
        if self.scheduler is not None:
            # A job that succeeded has no pass left in the work queue: only its markers go.
            await self.scheduler.withdraw(
                record.tenant, job.job_id, delete_released=job.state != jobs_pb2.JOB_STATE_SUCCEEDED
            )
        await self.budget.remove(record.tenant, job.job_id)
        log.info("job finished", extra={"job_id": job.job_id, "state": state})

    def schedule_callback(self, tenant: str, job_id: str) -> None:
        task = asyncio.create_task(self._deliver(tenant, job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, tenant: str, job_id: str) -> None:
        try:
            if await self.callbacks.deliver(tenant, job_id) is not None:
                await kv.remove(self._kv, callback_key(tenant, job_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("callback delivery failed; the sweeper retries it", extra={"job_id": job_id})

    async def _claim_callback(self, tenant: str, job_id: str, until: datetime) -> events_pb2.JobRecord | None:
        claimed: dict[str, bool] = {}

        def claim(record: events_pb2.JobRecord) -> bool:
            if record.job.callback_outcome or not record.job.callback_url:
                return False
            holder = record.callback_claimed_until
            if holder.seconds and holder.ToDatetime(tzinfo=UTC) > datetime.now(UTC):
                return False
            record.callback_claimed_until.FromDatetime(until.astimezone(UTC))
            claimed["ok"] = True
            return True

        record = await self.jobs.update(tenant, job_id, claim)
        return record if claimed.get("ok") else None

    async def _record_callback(self, tenant: str, job_id: str, outcome: str, attempts: int) -> None:
        def record_outcome(record: events_pb2.JobRecord) -> bool:
            record.job.callback_outcome = outcome
            record.job.callback_attempts = attempts
            record.ClearField("callback_claimed_until")
            return True

        await self.jobs.update(tenant, job_id, record_outcome)

    # background chores -------------------------------------------------------------------------------

    async def sweep_once(self) -> None:
        """One pass over unfinished jobs and pending callbacks."""
        stale_before = datetime.now(UTC) - timedelta(seconds=STALE_OUTBOX_SECONDS)
        for tenant, job_id, _cost in await self.budget.markers():
            record = await self.jobs.load(tenant, job_id)
            if record is None:
                await self.budget.remove(tenant, job_id)
                continue
            if (record.outbox_events or record.outbox_requests) and record.job.updated_at.ToDatetime(
                tzinfo=UTC
            ) < stale_before:
                log.warning("publishing an outbox left behind", extra={"job_id": job_id})
                await self.jobs.flush(record)
            if job_state.is_terminal(record):
                await self.finished(record, count=False)
        if self.scheduler is not None:
            await self.scheduler.reconcile(self.jobs.load)
        for key in await kv.keys(self._kv, "callback.>"):
            _, tenant, job_id = key.split(".", 2)
            record = await self.jobs.load(tenant, job_id)
            if record is None or record.job.callback_outcome or not record.job.callback_url:
                await kv.remove(self._kv, key)
                continue
            holder = record.callback_claimed_until
            if not holder.seconds or holder.ToDatetime(tzinfo=UTC) <= datetime.now(UTC):
                self.schedule_callback(tenant, job_id)

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
            except MultipassError as error:
                log.warning("sweep failed", extra={"error": str(error)})
            except Exception:
                log.exception("sweep failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_seconds)

    async def refresh_queue_gauge(self) -> None:
        with nats_errors("read consumer info"):
            consumers = await self.bus.js.consumers_info(subjects.STREAM_PASSES)
        for info in consumers:
            name = info.name or (info.config.durable_name if info.config else "") or "unknown"
            gateway_metrics.QUEUE_PENDING.labels(consumer=name).set(
                (info.num_pending or 0) + (info.num_ack_pending or 0)
            )

    async def run_queue_gauge(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh_queue_gauge()
            except Exception as error:  # noqa: BLE001 - a metric must never take the gateway down
                log.debug("queue gauge refresh failed", extra={"error": repr(error)})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.queue_metrics_interval_seconds)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
