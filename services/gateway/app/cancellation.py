"""CancelJob: end the job CANCELLED, withdraw its queued passes and tell its running passes to stop."""

from __future__ import annotations

from multipass import names
from multipass.bus import Bus
from multipass.v1 import jobs_pb2
from multipass_gateway.app.job_end import JobEnd
from multipass_gateway.domain import job_state
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pass_scheduler import PassScheduler


class Canceller:
    def __init__(self, *, bus: Bus, jobs: JobStore, scheduler: PassScheduler, job_end: JobEnd):
        self.bus = bus
        self.jobs = jobs
        self.scheduler = scheduler
        self.job_end = job_end

    async def cancel(self, tenant: str, job_id: str) -> jobs_pb2.CancelJobResponse:
        """Cancel the tenant's job; NotFound for another tenant's job, a no-op on an ended one.

        The cancelled state and its events are written first; then the broadcast on the job's cancel
        subject stops passes a worker is running, and the scheduler forgets the job's ready passes and
        deletes its released requests from the work queue.
        """
        await self.jobs.get(tenant, job_id)  # NotFound for another tenant's job
        record, outcome = await self.jobs.transition(tenant, job_id, job_state.cancel)
        if not outcome.changed:
            return jobs_pb2.CancelJobResponse(
                state=record.job.state, cancelled=False, message=f"nothing to cancel: {outcome.note}"
            )
        await self.jobs.flush(record)
        await self.bus.publish_core(names.cancel_subject(job_id), jobs_pb2.CancelJobRequest(job_id=job_id))
        withdrawn = await self.scheduler.withdraw(tenant, job_id)
        await self.job_end.finished(record)
        return jobs_pb2.CancelJobResponse(
            state=record.job.state,
            cancelled=True,
            message=f"cancelled; {withdrawn} queued pass request(s) withdrawn, running passes told to stop",
        )
