"""Deleting a job (``Jobs.DeleteJob``): everything it stored goes, and it is NOT_FOUND afterwards.

A job still running is cancelled first (its passes stop, its queued requests are withdrawn, its callback is
sent with the cancelled state). Then its record goes last but one, so a delete that fails half-way can be
repeated (the record still names the job): its pending-work and callback markers, its scheduler markers,
its idempotency binding (the key may be used again), the job events kept for ``WatchJob``, the record,
and every object under its prefix in the jobs bucket (inputs, pass outputs, masks, pose image).

A pass a worker was finishing as the cancel arrived may still store its output after the objects were
deleted: the objects are deleted once more a few seconds later, when every worker has heard the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from multipass import names
from multipass.bus import Bus
from multipass.errors import MultipassError
from multipass.store import ObjectStore
from multipass.v1 import jobs_pb2
from multipass_gateway.app.cancellation import Canceller
from multipass_gateway.app.job_end import callback_key
from multipass_gateway.app.submission import idempotency_kv_key
from multipass_gateway.domain import job_state
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.pending_budget import PendingBudget

log = logging.getLogger(__name__)

#: Seconds after which a deleted job's objects are deleted again (a pass stopped by the cancel may have
#: stored its output meanwhile).
SECOND_SWEEP_SECONDS = 5.0


class JobDeleter:
    def __init__(
        self,
        *,
        bus: Bus,
        jobs: JobStore,
        canceller: Canceller,
        scheduler: PassScheduler,
        budget: PendingBudget,
        objects: ObjectStore,
        idempotency,
        second_sweep_seconds: float = SECOND_SWEEP_SECONDS,
    ):
        self.bus = bus
        self.jobs = jobs
        self.canceller = canceller
        self.scheduler = scheduler
        self.budget = budget
        self.objects = objects
        self.idempotency = idempotency
        self.second_sweep_seconds = second_sweep_seconds
        self._sweeps: set[asyncio.Task] = set()

    async def delete(self, tenant: str, job_id: str) -> jobs_pb2.DeleteJobResponse:
        """Delete the tenant's job; NotFound for another tenant's job or one that does not exist."""
        record = await self.jobs.get(tenant, job_id)
        if not job_state.is_terminal(record):
            await self.canceller.cancel(tenant, job_id)
            record = await self.jobs.get(tenant, job_id)
        state = record.job.state
        await self.budget.remove(tenant, job_id)
        await self.jobs.kv.remove(callback_key(tenant, job_id))
        await self.scheduler.withdraw(tenant, job_id)
        if record.job.idempotency_key:
            await self.idempotency.remove(idempotency_kv_key(tenant, record.job.idempotency_key))
        await self.bus.purge_subject(names.STREAM_JOB_EVENTS, names.job_event_subject(job_id))
        await self.jobs.delete(tenant, job_id)
        deleted = await self._delete_objects(tenant, job_id)
        self._sweep_again(tenant, job_id)
        log.info("job deleted", extra={"job_id": job_id, "tenant": tenant, "objects": deleted})
        return jobs_pb2.DeleteJobResponse(
            state=state, objects_deleted=deleted, message=f"deleted with {deleted} stored object(s)"
        )

    async def _delete_objects(self, tenant: str, job_id: str) -> int:
        return await self.objects.delete_prefix(names.BUCKET_JOBS, names.job_prefix(tenant, job_id))

    def _sweep_again(self, tenant: str, job_id: str) -> None:
        task = asyncio.ensure_future(self._second_sweep(tenant, job_id))
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _second_sweep(self, tenant: str, job_id: str) -> None:
        await asyncio.sleep(self.second_sweep_seconds)
        try:
            late = await self._delete_objects(tenant, job_id)
        except MultipassError as error:
            log.warning("second sweep of a deleted job failed", extra={"job_id": job_id, "error": str(error)})
            return
        if late:
            log.info(
                "objects of a deleted job stored late were deleted", extra={"job_id": job_id, "objects": late}
            )

    async def close(self) -> None:
        for task in list(self._sweeps):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._sweeps, return_exceptions=True)
