"""The sweeper: repairs what a crashed replica left behind, so a restart loses nothing.

Every ``MULTIPASS_GATEWAY_SWEEP_INTERVAL_SECONDS`` it publishes outboxes left in job records, finishes
ended jobs whose markers remain, drops scheduler entries of passes that are over, and retries callbacks
whose claim expired.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from multipass.bus import KvBucket
from multipass_gateway.app.job_end import CALLBACK_MARKERS, JobEnd
from multipass_gateway.domain import job_state
from multipass_gateway.infra import periodic
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.pending_budget import PendingBudget

log = logging.getLogger(__name__)

#: An outbox untouched this long is published by the sweeper.
STALE_OUTBOX_SECONDS = 5.0


class Sweeper:
    def __init__(
        self,
        *,
        jobs: JobStore,
        jobs_kv: KvBucket,
        budget: PendingBudget,
        scheduler: PassScheduler,
        job_end: JobEnd,
        interval: float,
    ):
        self.jobs = jobs
        self._kv = jobs_kv
        self.budget = budget
        self.scheduler = scheduler
        self.job_end = job_end
        self.interval = interval

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
                await self.job_end.finished(record, count=False)
        await self.scheduler.reconcile(self.jobs.load)
        for key in await self._kv.keys(CALLBACK_MARKERS):
            _, tenant, job_id = key.split(".", 2)
            record = await self.jobs.load(tenant, job_id)
            if record is None or record.job.callback_outcome or not record.job.callback_url:
                await self._kv.remove(key)
                continue
            holder = record.callback_claimed_until
            if not holder.seconds or holder.ToDatetime(tzinfo=UTC) <= datetime.now(UTC):
                self.job_end.schedule_callback(tenant, job_id)

    async def run(self, stop: asyncio.Event) -> None:
        await periodic.every(self.interval, stop, self.sweep_once, what="sweep")
