"""Bounded pending work: passes of unfinished jobs, per tenant and across every tenant.

Each unfinished job has a marker ``active.<tenant>.<job_id>`` in KV ``multipass-jobs`` whose value is the
number of passes it planned (it counts in full until the job ends, then the marker goes). A submit that
would push the tenant's or the global sum past its limit is RESOURCE_EXHAUSTED with a retry hint.

KV is the durable truth, but SubmitJob does not list it: each replica keeps a mirror of the markers
(per-tenant and global sums), changed at once by its own writes, by other replicas' notes
(:mod:`multipass_gateway.replica_notes`) and rebuilt from a KV listing every ``refresh_interval``
seconds, so a check costs no round trip whatever the number of unfinished jobs. With one replica the
sums are exact (every marker write goes through it); with several a peer's write is seen when its note
arrives, or at the next refresh when a note was lost. Concurrent submits may overshoot by the jobs in
flight between check and marker: a soft bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from nats.js.kv import KeyValue

from multipass.bus import nats_errors
from multipass.errors import MultipassError, ResourceExhausted
from multipass_gateway import kv, names
from multipass_gateway.replica_notes import ReplicaNotes
from multipass_gateway.settings import Limits

log = logging.getLogger(__name__)

ACTIVE = "active"


def _cost(value: bytes | str) -> int:
    try:
        return max(0, int(value or b"0"))
    except ValueError:
        return 0


class PendingBudget:
    def __init__(
        self,
        store: KeyValue,
        limits: Limits,
        *,
        refresh_interval: float = 5.0,
        notes: ReplicaNotes | None = None,
    ):
        self._kv = store
        self._limits = limits
        self.refresh_interval = refresh_interval
        self.notes = notes or ReplicaNotes(None)
        self.notes.listen(self._on_note)
        self._markers: dict[tuple[str, str], int] | None = None  # None until first read from KV
        self._per_tenant: Counter = Counter()
        self._total = 0
        self._changes: list[tuple[str, str, int | None]] | None = None  # while a refresh lists
        self._loading: asyncio.Future | None = None

    # the durable markers -------------------------------------------------------------------------

    async def markers(self) -> list[tuple[str, str, int]]:
        """(tenant, job_id, planned passes) of every unfinished job, as KV holds them now."""
        found = []
        for key, value in await kv.entries(self._kv, f"{ACTIVE}.>"):
            _, tenant, job_id = key.split(".", 2)
            found.append((tenant, job_id, _cost(value)))
        return found

    async def add(self, tenant: str, job_id: str, cost: int) -> None:
        with nats_errors("add pending-work marker"):
            await self._kv.put(names.active_key(tenant, job_id), str(cost).encode())
        self._set(tenant, job_id, cost)
        self.notes.written(names.active_key(tenant, job_id), str(cost))

    async def remove(self, tenant: str, job_id: str) -> None:
        await kv.remove(self._kv, names.active_key(tenant, job_id))
        self._set(tenant, job_id, None)
        self.notes.removed(names.active_key(tenant, job_id))

    # the mirror -----------------------------------------------------------------------------------

    def _set(self, tenant: str, job_id: str, cost: int | None) -> None:
        if self._changes is not None:
            self._changes.append((tenant, job_id, cost))
        if self._markers is None:
            return  # not loaded yet: the first refresh reads it
        old = self._markers.pop((tenant, job_id), None)
        if old is not None:
            self._per_tenant[tenant] -= old
            self._total -= old
        if cost is not None:
            self._markers[(tenant, job_id)] = cost
            self._per_tenant[tenant] += cost
            self._total += cost

    def _on_note(self, op: str, name: str, value: str) -> None:
        if not name.startswith(f"{ACTIVE}."):
            return
        parts = name.split(".", 2)
        if len(parts) != 3:
            return
        self._set(parts[1], parts[2], _cost(value) if op == "+" else None)

    async def refresh(self) -> None:
        """Rebuild the mirror from KV; writes made while listing are applied on top.

        The first load reads every marker; later ones list the live keys in one request and read only
        the values the mirror lacks (a marker's cost never changes once written).
        """
        self._changes = []
        try:
            if self._markers is None:
                listed = await self.markers()
            else:
                listed = await self._listed(dict(self._markers))
        finally:
            changes, self._changes = self._changes, None
        self._markers, self._per_tenant, self._total = {}, Counter(), 0
        for tenant, job_id, cost in listed:
            self._set(tenant, job_id, cost)
        for tenant, job_id, cost in changes:
            self._set(tenant, job_id, cost)

    async def _listed(self, known: dict[tuple[str, str], int]) -> list[tuple[str, str, int]]:
        found: list[tuple[str, str, int]] = []
        unknown: list[tuple[str, str, str]] = []
        for key in await kv.purged_keys(self._kv, f"{ACTIVE}.>"):
            _, tenant, job_id = key.split(".", 2)
            if (tenant, job_id) in known:
                found.append((tenant, job_id, known[(tenant, job_id)]))
            else:
                unknown.append((key, tenant, job_id))
        values = await asyncio.gather(*(kv.get(self._kv, key) for key, _, _ in unknown))
        for (_key, tenant, job_id), value in zip(unknown, values, strict=True):
            if value is not None:
                found.append((tenant, job_id, _cost(value[0])))
        return found

    async def _ensure_loaded(self) -> None:
        if self._markers is not None:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._loading)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the mirror every ``refresh_interval`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await self.refresh()
            except MultipassError as error:
                log.warning("pending-work markers not refreshed", extra={"error": str(error)})
            except Exception:
                log.exception("pending-work markers not refreshed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_interval)

    def pending(self, tenant: str) -> tuple[int, int]:
        """(the tenant's, everyone's) planned passes of unfinished jobs, as the mirror has them."""
        return self._per_tenant[tenant], self._total

    # the check -------------------------------------------------------------------------------------

    async def check(self, tenant: str, cost: int) -> None:
        await self._ensure_loaded()
        mine, total = self.pending(tenant)
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
