"""What a submit that did not go through leaves behind: removed, and retried until it is.

A submit that fails after it began writing the job (NATS or the object store unavailable, a write that timed
out after the server stored it) may leave its job record, its pending-work marker and its stored inputs. The
client was told the submit failed, so none of it may stay: a record without its marker is seen by nothing
(the sweeper walks the markers) and would be listed as QUEUED for ever. :meth:`SubmitCleanup.discard` removes
them at once and, when that fails, again in the background with growing pauses until it succeeds or
``deadline`` seconds pass. The record goes first and the marker after it: while the record may exist, its
marker stays, so a replica that dies meanwhile leaves a job the sweeper finds (and runs) rather than one
stuck for ever.
"""

from __future__ import annotations

import asyncio
import logging

from multipass import names
from multipass.store import ObjectStore
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pending_budget import PendingBudget

log = logging.getLogger(__name__)

#: Seconds a failed cleanup is retried for (an outage of NATS or of the object store that long).
DEADLINE_SECONDS = 600.0
FIRST_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 10.0


class SubmitCleanup:
    def __init__(
        self,
        *,
        jobs: JobStore,
        budget: PendingBudget,
        objects: ObjectStore,
        deadline: float = DEADLINE_SECONDS,
        first_pause: float = FIRST_PAUSE_SECONDS,
        max_pause: float = MAX_PAUSE_SECONDS,
    ):
        self.jobs = jobs
        self.budget = budget
        self.objects = objects
        self.deadline = deadline
        self.first_pause = first_pause
        self.max_pause = max_pause
        self._retrying: set[asyncio.Task] = set()

    async def discard(self, tenant: str, job_id: str, *, record: bool) -> None:
        """Remove the job's record (when ``record``: its write was attempted), marker and inputs now; what
        cannot be removed now is retried in the background. Never raises: the submit's error matters more."""
        if await self._attempt(tenant, job_id, record):
            return
        task = asyncio.ensure_future(self._retry(tenant, job_id, record))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    @property
    def pending(self) -> int:
        """Cleanups still being retried."""
        return len(self._retrying)

    async def _attempt(self, tenant: str, job_id: str, record: bool) -> bool:
        try:
            if record:
                await self.jobs.delete(tenant, job_id)
            await self.budget.remove(tenant, job_id)
            await self.objects.delete_prefix(names.BUCKET_JOBS, names.job_prefix(tenant, job_id))
        except Exception as error:  # noqa: BLE001 - retried; the submit's own error is what the client gets
            log.warning(
                "could not clean up after a failed submit yet",
                extra={"job_id": job_id, "tenant": tenant, "error": repr(error)},
            )
            return False
        return True

    async def _retry(self, tenant: str, job_id: str, record: bool) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        pause = self.first_pause
        while loop.time() < give_up:
            await asyncio.sleep(pause)
            if await self._attempt(tenant, job_id, record):
                log.info("cleaned up after a failed submit", extra={"job_id": job_id, "tenant": tenant})
                return
            pause = min(pause * 2, self.max_pause)
        log.error(
            "gave up cleaning up after a failed submit; its record may stay",
            extra={"job_id": job_id, "tenant": tenant, "seconds": self.deadline},
        )

    async def close(self) -> None:
        """Stop the retries (the replica is stopping; what is left stays for the sweeper or an operator)."""
        for task in list(self._retrying):
            task.cancel()
        await asyncio.gather(*self._retrying, return_exceptions=True)
