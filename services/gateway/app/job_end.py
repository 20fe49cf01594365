"""What happens once a job ended: metrics, its callback, the end of its scheduler entries and budget marker.

:meth:`JobEnd.finished` runs after the transition that ended the job was written and its outbox
published. A job with a callback URL gets the marker ``callback.<tenant>.<job_id>`` in KV until the
callback's outcome is recorded on the job, so the sweeper retries a delivery a crash interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime

from multipass.bus import KvBucket
from multipass.v1 import common_pb2, events_pb2, jobs_pb2
from multipass_gateway.app.tenant_usage import TenantUsage
from multipass_gateway.infra import metrics
from multipass_gateway.infra.callbacks import CallbackSender, JobLoader
from multipass_gateway.infra.fetch import SafeHttp
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.pending_budget import PendingBudget
from multipass_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

#: The KV keys of the callbacks not delivered yet.
CALLBACK_MARKERS = "callback.>"


def callback_key(tenant: str, job_id: str) -> str:
    return f"callback.{tenant}.{job_id}"


def pass_kind(pass_name: str) -> str:
    """``person-1`` -> ``person``: a pass's kind, one label value per kind, never per person."""
    return re.sub(r"-\d+$", "", pass_name)


class JobEnd:
    def __init__(
        self,
        *,
        jobs: JobStore,
        jobs_kv: KvBucket,
        budget: PendingBudget,
        scheduler: PassScheduler,
        http: SafeHttp,
        settings: GatewaySettings,
        public_view: JobLoader,
    ):
        """``public_view`` turns a record into the Job a callback carries (what GetJob returns)."""
        self.jobs = jobs
        self._kv = jobs_kv
        #: Per-tenant usage counters (jobs, device seconds), counted where a job ends.
        self.usage = TenantUsage(settings.tenant_metrics)
        self.budget = budget
        self.scheduler = scheduler
        self._tasks: set[asyncio.Task] = set()
        self.callbacks = CallbackSender(
            http,
            settings.callbacks,
            claim=self._claim_callback,
            record_outcome=self._record_callback,
            load_job=public_view,
        )

    async def finished(self, record: events_pb2.JobRecord, *, count: bool = True) -> None:
        """Called after the transition that ended the job was written and its outbox published."""
        job = record.job
        state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        if count:
            metrics.JOBS_FINISHED.labels(state=state).inc()
            if job.state == jobs_pb2.JOB_STATE_FAILED:
                metrics.JOBS_FAILED.labels(
                    code=common_pb2.ErrorCode.Name(job.error.code).removeprefix("ERROR_CODE_").lower(),
                    pass_kind=pass_kind(job.error.pass_name),
                ).inc()
            self.usage.finished(record)
            if job.HasField("finished_at"):
                duration = (job.finished_at.ToDatetime() - job.created_at.ToDatetime()).total_seconds()
                metrics.JOB_DURATION.observe(max(0.0, duration))
        if job.callback_url and not job.callback_outcome:
            await self._kv.put(callback_key(record.tenant, job.job_id), b"1")
            self.schedule_callback(record.tenant, job.job_id)
        # A job that succeeded has no pass left in the work queue: only its markers go.
        await self.scheduler.withdraw(
            record.tenant, job.job_id, delete_released=job.state != jobs_pb2.JOB_STATE_SUCCEEDED
        )
        await self.budget.remove(record.tenant, job.job_id)
        fields = {"job_id": job.job_id, "tenant": record.tenant, "state": state}
        if job.HasField("error"):
            fields |= {
                "error_code": common_pb2.ErrorCode.Name(job.error.code).removeprefix("ERROR_CODE_"),
                "failed_pass": job.error.pass_name,
            }
        log.info("job finished", extra=fields)

    # callbacks -------------------------------------------------------------------------------------

    def schedule_callback(self, tenant: str, job_id: str) -> None:
        task = asyncio.create_task(self._deliver(tenant, job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, tenant: str, job_id: str) -> None:
        try:
            if await self.callbacks.deliver(tenant, job_id) is not None:
                await self._kv.remove(callback_key(tenant, job_id))
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

    async def close(self) -> None:
        """Cancel the callback deliveries under way (the sweeper of a live replica takes them over)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
