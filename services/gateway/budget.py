"""Bounded pending work: passes of unfinished jobs, per tenant and across every tenant.

Each unfinished job has a marker ``active.<tenant>.<job_id>`` in KV ``multipass-jobs`` whose value is the
number of passes it planned (it counts in full until the job ends, then the marker goes). A submit that
would push the tenant's or the global sum past its limit is RESOURCE_EXHAUSTED with a retry hint.
Concurrent submits may overshoot by the jobs in flight between check and marker: a soft bound.
"""

from __future__ import annotations

from nats.js.kv import KeyValue

from multipass.bus import nats_errors
from multipass.errors import ResourceExhausted
from multipass_gateway import kv, names
from multipass_gateway.settings import Limits


class PendingBudget:
    def __init__(self, store: KeyValue, limits: Limits):
        self._kv = store
        self._limits = limits

    async def markers(self) -> list[tuple[str, str, int]]:
        """(tenant, job_id, planned passes) of every unfinished job."""
        found = []
        for key, value in await kv.entries(self._kv, "active.>"):
            _, tenant, job_id = key.split(".", 2)
            try:
                cost = int(value or b"0")
            except ValueError:
                cost = 0
            found.append((tenant, job_id, cost))
        return found

    async def check(self, tenant: str, cost: int) -> None:
        markers = await self.markers()
        total = sum(c for _, _, c in markers)
        mine = sum(c for t, _, c in markers if t == tenant)
        retry = self._limits.retry_after_seconds
        if mine + cost > self._limits.tenant_max_pending_passes:
            raise ResourceExhausted(
                f"too much pending work for this tenant: {mine} passes of unfinished jobs + {cost} for this job "
                f"> {self._limits.tenant_max_pending_passes}; retry after {retry:g} s or when jobs finish",
                retry_after_seconds=retry,
            )
        if total + cost > self._limits.global_max_pending_passes:
            raise ResourceExhausted(
                f"the service is at its pending-work limit ({total} passes of unfinished jobs); retry after {retry:g} s",
                retry_after_seconds=retry,
            )

    async def add(self, tenant: str, job_id: str, cost: int) -> None:
        with nats_errors("add pending-work marker"):
            await self._kv.put(names.active_key(tenant, job_id), str(cost).encode())

    async def remove(self, tenant: str, job_id: str) -> None:
        await kv.remove(self._kv, names.active_key(tenant, job_id))
