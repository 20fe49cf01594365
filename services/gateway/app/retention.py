"""Job retention: finished jobs older than the operator's ``job_retention_seconds`` are deleted whole.

Off by default (0 keeps every job until DeleteJob). When set, every ``retention_sweep_seconds`` each replica
lists the job records (ids begin with their creation time, so no record is read for a young job) and
deletes, through :class:`~multipass_gateway.app.deletion.JobDeleter` (record, events, images, markers),
each job that ended longer ago than the retention. A job still queued or running is never touched, however
old. Two replicas deleting the same job is harmless: the second finds it gone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta

from multipass.bus import KvBucket
from multipass.errors import NotFound
from multipass_gateway.app.deletion import JobDeleter
from multipass_gateway.app.submission import job_id_time
from multipass_gateway.domain import job_state
from multipass_gateway.infra import metrics, periodic
from multipass_gateway.infra.job_store import JobStore

log = logging.getLogger(__name__)

_JOB_KEY = re.compile(r"^(?P<tenant>[^.]+)\.(?P<job_id>[0-9a-f]{24})$")


class JobRetention:
    def __init__(
        self,
        *,
        jobs: JobStore,
        jobs_kv: KvBucket,
        deleter: JobDeleter,
        retention_seconds: float,
        interval: float,
    ):
        self.jobs = jobs
        self._kv = jobs_kv
        self.deleter = deleter
        self.retention = timedelta(seconds=retention_seconds) if retention_seconds > 0 else None
        self.interval = interval

    async def expire_once(self, now: datetime | None = None) -> int:
        """Delete every finished job that ended before ``now`` minus the retention; returns how many."""
        if self.retention is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - self.retention
        deleted = 0
        for key in await self._kv.keys("*.*"):
            match = _JOB_KEY.match(key)
            created = job_id_time(match["job_id"]) if match else None
            if created is None or created > cutoff.timestamp():
                continue  # not a job record, or created (so also ended) after the cutoff
            tenant, job_id = match["tenant"], match["job_id"]
            record = await self.jobs.load(tenant, job_id)
            if record is None or not job_state.is_terminal(record):
                continue
            if record.job.updated_at.ToDatetime(tzinfo=UTC) > cutoff:
                continue  # ended within the retention
            try:
                await self.deleter.delete(tenant, job_id)
            except NotFound:
                continue  # another replica came first
            deleted += 1
        if deleted:
            metrics.JOBS_EXPIRED.inc(deleted)
            log.info("jobs past their retention deleted", extra={"count": deleted})
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        if self.retention is not None:
            await periodic.every(self.interval, stop, self.expire_once, what="job retention sweep")
