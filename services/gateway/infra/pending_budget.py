"""Bounded pending work: passes of unfinished jobs, per tenant and across every tenant.

Each unfinished job has a marker ``active.<tenant>.<job_id>`` in KV ``multipass-jobs`` whose value is the
number of passes it planned (it counts in full until the job ends, then the marker goes). A submit that
would push the tenant's or the global sum past its limit is RESOURCE_EXHAUSTED with a retry hint. The
check reads a :class:`~multipass_gateway.infra.kv_mirror.KvMirror` of the markers, not KV: a soft bound
with several replicas (docs/RELIABILITY.md, "Pending-work budget").
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from multipass import names
from multipass.bus import KvBucket
from multipass.errors import FailedPrecondition, Reason, ResourceExhausted
from multipass_gateway.infra.kv_mirror import KvMirror
from multipass_gateway.infra.replica_notes import ReplicaNotes
from multipass_gateway.settings import Limits

ACTIVE = "active"


def _cost(value: bytes | str | None) -> int:
    try:
        return max(0, int(value or b"0"))
    except ValueError:
        return 0


def _job(key: str) -> tuple[str, str] | None:
    parts = key.split(".", 2)
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == ACTIVE else None


class PendingMirror(KvMirror):
    """The markers' costs by job, and their sums per tenant and in all."""

    def __init__(self, store: KvBucket | None, notes: ReplicaNotes | None = None):
        super().__init__(store, f"{ACTIVE}.>", notes, read_values=True)
        self.costs: dict[tuple[str, str], int] = {}
        self.per_tenant: Counter = Counter()
        self.total = 0

    def _set(self, job: tuple[str, str], cost: int | None) -> None:
        old = self.costs.pop(job, None)
        if old is not None:
            self.per_tenant[job[0]] -= old
            self.total -= old
        if cost is not None:
            self.costs[job] = cost
            self.per_tenant[job[0]] += cost
            self.total += cost

    def _put(self, key: str, value: bytes | None, *, own: bool) -> None:
        job = _job(key)
        if job is not None:
            self._set(job, _cost(value))

    def _remove(self, pattern: str) -> None:
        job = _job(pattern)
        if job is not None:
            self._set(job, None)

    def _rebuild(self, listed: Mapping[str, bytes | None]) -> None:
        known = self.costs
        self.costs, self.per_tenant, self.total = {}, Counter(), 0
        for key, value in listed.items():
            job = _job(key)
            if job is not None:
                self._set(job, _cost(value) if value is not None else known.get(job, 0))

    def _knows(self, key: str) -> bool:
        return _job(key) in self.costs


class PendingBudget:
    def __init__(
        self,
        store: KvBucket,
        limits: Limits,
        *,
        refresh_interval: float = 5.0,
        notes: ReplicaNotes | None = None,
    ):
        self._kv = store
        self._limits = limits
        self.refresh_interval = refresh_interval
        self.mirror = PendingMirror(store, notes)

    # the durable markers -------------------------------------------------------------------------

    async def markers(self) -> list[tuple[str, str, int]]:
        """(tenant, job_id, planned passes) of every unfinished job, as KV holds them now."""
        found = []
        for key, value in await self._kv.entries(f"{ACTIVE}.>"):
            _, tenant, job_id = key.split(".", 2)
            found.append((tenant, job_id, _cost(value)))
        return found

    async def add(self, tenant: str, job_id: str, cost: int) -> None:
        key = names.active_key(tenant, job_id)
        await self._kv.put(key, str(cost).encode())
        self.mirror.put(key, str(cost).encode())
        self.mirror.notes.written(key, str(cost))

    async def remove(self, tenant: str, job_id: str) -> None:
        key = names.active_key(tenant, job_id)
        await self._kv.remove(key)
        self.mirror.remove(key)
        self.mirror.notes.removed(key)

    # the mirror -----------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Rebuild the mirror from KV; writes made while listing are applied on top."""
        await self.mirror.resync()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the mirror every ``refresh_interval`` seconds until ``stop``."""
        await self.mirror.run(stop, self.refresh_interval, "pending-work markers")

    def pending(self, tenant: str) -> tuple[int, int]:
        """(the tenant's, everyone's) planned passes of unfinished jobs, as the mirror has them."""
        return self.mirror.per_tenant[tenant], self.mirror.total

    # the check -------------------------------------------------------------------------------------

    async def check(self, tenant: str, cost: int, tenant_limit: int = 0) -> None:
        """RESOURCE_EXHAUSTED unless ``cost`` more passes fit the tenant's limit (``tenant_limit``, its own;
        0: the gateway's setting) and the service's; FAILED_PRECONDITION when ``cost`` alone exceeds one."""
        await self.mirror.ensure_loaded()
        mine, total = self.pending(tenant)
        retry = self._limits.retry_after_seconds
        limit = tenant_limit or self._limits.tenant_max_pending_passes
        for scope, bound, who in (
            ("tenant", limit, "this tenant's"),
            ("service", self._limits.global_max_pending_passes, "the service's"),
        ):
            if cost > bound:  # no wait makes room for it: no retry hint
                raise FailedPrecondition(
                    f"this job alone needs {cost} passes, more than {who} limit of {bound} passes of "
                    "unfinished jobs, so it can never be accepted; ask for fewer images or persons, or "
                    "for a higher limit",
                    reason=Reason.QUOTA_EXCEEDED,
                    metadata={"scope": scope, "limit": str(bound), "cost": str(cost)},
                )
        if mine + cost > limit:
            raise ResourceExhausted(
                f"too much pending work for this tenant: {mine} passes of unfinished jobs + {cost} for this job "
                f"> {limit}; retry after {retry:g} s or when jobs finish",
                retry_after_seconds=retry,
                reason=Reason.QUOTA_EXCEEDED,
                metadata={"scope": "tenant", "limit": str(limit)},
            )
        if total + cost > self._limits.global_max_pending_passes:
            raise ResourceExhausted(
                f"the service is at its pending-work limit ({total} passes of unfinished jobs); retry after {retry:g} s",
                retry_after_seconds=retry,
                reason=Reason.QUOTA_EXCEEDED,
                metadata={"scope": "service", "limit": str(self._limits.global_max_pending_passes)},
            )
