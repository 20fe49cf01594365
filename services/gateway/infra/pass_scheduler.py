"""The pass scheduler's I/O: ready queues and flight markers in KV, release rounds to the work queue.

A transition's pass requests are not published as they are: :meth:`PassScheduler.enqueue` writes each to
its tenant's ready queue (KV ``multipass-jobs``, so a restart loses nothing), and release rounds publish
what the fair policy (:mod:`multipass_gateway.domain.scheduling`) allows, reading the replica's
:class:`~multipass_gateway.infra.queue_mirror.QueueMirror` rather than listing KV. When nothing waits in
any queue and the limits leave room, the fair policy would release the pass at once, so ``enqueue``
releases it itself and no ready entry is written (until it is published, the job record's outbox holds
the request). A released pass stays in flight until its attempt ends. The protocol (ownership between replicas, crashes between publish and
marker, bounds with several replicas) is in docs/RELIABILITY.md ("Fair scheduling between tenants").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import Bus, KeyExists, KeyVanished, KvBucket
from multipass.errors import MultipassError
from multipass.v1 import events_pb2
from multipass_gateway.domain.scheduling import (
    FLIGHT,
    MARKERS,
    READY,
    PassKey,
    attempt_active,
    job_flight_pattern,
    job_pattern,
    parse_marker,
    plan_release,
    valid_job,
)
from multipass_gateway.infra import metrics
from multipass_gateway.infra.object_copies import ObjectCopies
from multipass_gateway.infra.queue_mirror import QueueMirror
from multipass_gateway.infra.replica_notes import ReplicaNotes
from multipass_gateway.infra.tenant_limits import TenantLimitsCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queues:
    """What KV held: ready passes not released yet, per tenant, and passes in flight."""

    ready: dict[str, list[PassKey]]
    flight: list[PassKey]

    @property
    def in_flight(self) -> Counter:
        return Counter(key.tenant for key in self.flight)


class PassScheduler:
    def __init__(
        self,
        bus: Bus,
        store: KvBucket,
        *,
        tenant_limit: int,
        global_limit: int,
        interval: float = 1.0,
        resync_interval: float = 5.0,
        notes: ReplicaNotes | None = None,
        copies: ObjectCopies | None = None,
        own_limits: TenantLimitsCache | None = None,
        tenant_metrics: bool = False,
    ):
        if tenant_limit < 1 or global_limit < 1:
            raise ValueError("in-flight limits must be >= 1")
        self.bus = bus
        self._kv = store
        self.tenant_limit = tenant_limit
        #: Tenants' own ``max_passes_in_flight`` (``Admin.SetTenantLimits``), in place of ``tenant_limit``.
        self.own_limits = own_limits
        #: Export each tenant's ready and in-flight passes (``multipass_tenant_passes_*``).
        self.tenant_metrics = tenant_metrics
        self._exported_tenants: set[str] = set()
        self.global_limit = global_limit
        self.interval = interval
        self.resync_interval = resync_interval
        #: Copies of small inputs attached to the requests published (``PassRequest.copies``).
        self.copies = copies
        self.mirror = QueueMirror(store, notes, accept=self._peer_note)
        self._ended_while_releasing: set[PassKey] = set()
        self._recently_ended: dict[PassKey, float] = {}
        self._wake = asyncio.Event()
        self._last_tenant: str | None = None
        self._round = asyncio.Lock()

    # queueing ------------------------------------------------------------------------------------

    async def enqueue(self, tenant: str, entry: events_pb2.OutboxRequest) -> None:
        """Put a pass request into its tenant's ready queue (a second enqueue of the same attempt is a no-op)."""
        key = PassKey.of_request(tenant, entry.request)
        if not key.valid:
            # Names the planner never makes; publishing directly keeps such a pass from being stuck.
            log.warning("pass request with unschedulable names published directly", extra={"key": key.suffix})
            await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
            return
        if key in self._recently_ended:
            return  # an outbox published again after its pass ended (a retry is a new attempt)
        if key in self.mirror.flight or key in self.mirror.releasing:
            return  # released already: an outbox published again
        if self._free_now(key):
            await self._release_now(key, entry)
            return
        value = entry.SerializeToString()
        try:
            await self._kv.create(key.ready_key, value)
        except KeyExists:
            pass  # already queued
        except KeyVanished:
            # It existed, and was removed meanwhile: its pass ended or its job was withdrawn, so there is
            # nothing to queue.
            return
        self.mirror.put(key.ready_key, value)
        self.mirror.notes.written(key.ready_key)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _free_now(self, key: PassKey) -> bool:
        """Whether a release round would release ``key`` at once: nothing waits in any queue (no tenant is
        overtaken), the limits leave room, and the mirror is current."""
        mirror = self.mirror
        if not mirror.loaded or mirror.due(self.resync_interval) or key in mirror.ready:
            return False
        if len(mirror.flight) >= self.global_limit or mirror.any_waiting():
            return False
        return sum(1 for k in mirror.flight if k.tenant == key.tenant) < self._limit_known(key.tenant)

    def _limit_known(self, tenant: str) -> int:
        """The tenant's in-flight limit as last read (no I/O: the submit that queued the pass read it)."""
        own = self.own_limits.peek(tenant) if self.own_limits is not None else None
        return (own.max_passes_in_flight if own is not None else 0) or self.tenant_limit

    async def _limits_of(self, tenants) -> dict[str, int]:
        """Each waiting tenant's own in-flight limit, read at most once per the cache's time."""
        if self.own_limits is None:
            return {}
        found = {}
        for tenant in tenants:
            try:
                found[tenant] = (await self.own_limits.get(tenant)).max_passes_in_flight
            except (MultipassError, ValueError):  # unreachable or unreadable: the last read, else the setting
                log.warning("tenant limits unreadable; using the last known", extra={"tenant": tenant})
                found[tenant] = self._limit_known(tenant)
        return found

    async def _release_now(self, key: PassKey, entry: events_pb2.OutboxRequest) -> None:
        self.mirror.releasing.add(key)
        self.mirror.put(key.flight_key)
        try:
            await self._publish(key, entry)
        except BaseException:
            self.mirror.flight.discard(key)  # not published: the slot stays free, the outbox keeps it
            raise
        finally:
            self.mirror.releasing.discard(key)
        self._export_gauges()

    async def done(self, key: PassKey) -> None:
        """The pass attempt ended: its slot is free (its ready entry and flight marker go)."""
        if key.valid:
            self._ended(key)
            await self._purge(key.both)
            self.wake()

    def _ended(self, key: PassKey) -> None:
        """Remember for a while that the attempt ended, whoever saw it end.

        A pass may end before the release that published it has written its flight marker (an instant
        worker), or before another replica's note of that marker arrives: the marker, or the note,
        then outlives the pass. Such a marker is purged when it shows up (in this replica's release, or
        in a resync listing) and such a note is ignored, so no slot is held by a pass that is over.
        """
        self._recently_ended[key] = time.monotonic()
        if key in self.mirror.releasing:
            self._ended_while_releasing.add(key)

    async def withdraw(self, tenant: str, job_id: str, *, delete_released: bool = True) -> int:
        """Forget every queued pass of the job and delete its released requests from the work queue.

        Returns how many released requests were deleted before a worker finished them (cancel). With
        ``delete_released=False`` (a job that succeeded: every pass it released has ended) only the
        markers go, without listing the job's flight markers for their stream sequences.
        """
        if not valid_job(tenant, job_id):
            return 0
        self.mirror.remove(job_pattern(tenant, job_id))  # no round releases them from now on
        withdrawn = 0
        if delete_released:
            for _key, value in await self._kv.entries(job_flight_pattern(tenant, job_id)):
                try:
                    sequence = int(value or b"0")
                except ValueError:
                    sequence = 0
                if sequence > 0:
                    try:
                        withdrawn += await self.bus.delete_message(names.STREAM_PASSES, sequence)
                    except Exception as error:  # noqa: BLE001 - already done and acked: nothing to withdraw
                        log.debug(
                            "pass request not withdrawn", extra={"sequence": sequence, "error": repr(error)}
                        )
        await self._purge(job_pattern(tenant, job_id))
        self.wake()
        return withdrawn

    # mirror upkeep --------------------------------------------------------------------------------

    def _peer_note(self, op: str, name: str) -> bool:
        """Another replica wrote or removed markers: remember ended attempts, wake the releaser, and
        ignore a flight note that arrives after its pass ended."""
        if op == "-":
            if name.startswith("sched.*.") and not name.endswith(".>"):
                key = PassKey.parse(name[len("sched.*.") :])
                if key is not None:
                    self._ended(key)
            self.wake()  # a slot may have come free
            return True
        parsed = parse_marker(name)
        return parsed is not None and not (parsed[0] == "flight" and parsed[1] in self._recently_ended)

    async def resync(self) -> None:
        """Rebuild the mirror from KV (the durable truth): catches what notes missed and other crashes."""
        await self.mirror.resync()
        now = time.monotonic()
        # Flight markers written after their pass had ended (see _ended) go now, not at the next sweep.
        leftovers = [
            k for k in self.mirror.flight if k in self._recently_ended and k not in self.mirror.releasing
        ]
        keep = 2 * self.resync_interval
        self._recently_ended = {k: t for k, t in self._recently_ended.items() if now - t < keep}
        for key in leftovers:
            await self._purge(key.both)

    # releasing -----------------------------------------------------------------------------------

    async def queues(self) -> Queues:
        """What KV holds now (a listing; the release rounds read the mirror instead)."""
        ready: dict[str, list[PassKey]] = {}
        flight: list[PassKey] = []
        waiting: list[PassKey] = []
        for name in await self._kv.purged_keys(MARKERS):
            parsed = parse_marker(name)
            if parsed is None:
                continue
            head, key = parsed
            (waiting if head == "ready" else flight).append(key)
        flying = set(flight)
        for key in waiting:
            if key not in flying:
                ready.setdefault(key.tenant, []).append(key)
        for queue in ready.values():
            queue.sort()
        return Queues(ready=ready, flight=flight)

    async def release_once(self) -> int:
        """One round: release what the policy allows from the mirror. Returns how many were released.

        The plan's releases run concurrently (their publish acknowledgements and KV writes overlap);
        each one is still publish, then flight marker.
        """
        async with self._round:
            if self.mirror.due(self.resync_interval):
                await self.resync()
            ready, flight = self.mirror.queues(orphan_after=2 * self.resync_interval)
            plan = plan_release(
                ready,
                Counter(key.tenant for key in flight),
                tenant_limit=self.tenant_limit,
                global_limit=self.global_limit,
                after=self._last_tenant,
                own_limits=await self._limits_of(t for t, queue in ready.items() if queue),
            )
            for key in plan:
                self.mirror.releasing.add(key)
                self.mirror.put(key.flight_key)
            if plan:
                self._last_tenant = plan[-1].tenant
            try:
                results = await asyncio.gather(*(self._release(key) for key in plan), return_exceptions=True)
            finally:
                self.mirror.releasing.difference_update(plan)
            released = 0
            failure: BaseException | None = None
            for key, result in zip(plan, results, strict=True):
                if result is True:
                    released += 1
                    continue
                self.mirror.flight.discard(key)  # not published: the slot stays free
                if isinstance(result, BaseException):
                    failure = failure or result
            self._export_gauges()
            if failure is not None:
                raise failure
            return released

    def _export_gauges(self) -> None:
        """The ready and in-flight gauges, in all and (with tenant metrics) per tenant; a tenant with
        nothing waiting or in flight loses its series."""
        mirror = self.mirror
        metrics.PASSES_IN_FLIGHT.set(len(mirror.flight))
        if not self.tenant_metrics:
            metrics.PASSES_READY.set(mirror.waiting())
            return
        ready, flying = mirror.waiting_by_tenant(), Counter(key.tenant for key in mirror.flight)
        metrics.PASSES_READY.set(sum(ready.values()))  # one pass over the ready entries, not two
        present = set(ready) | set(flying)
        for tenant in present:
            metrics.TENANT_PASSES_READY.labels(tenant=tenant).set(ready[tenant])
            metrics.TENANT_PASSES_IN_FLIGHT.labels(tenant=tenant).set(flying[tenant])
        for tenant in self._exported_tenants - present:
            for gauge in (metrics.TENANT_PASSES_READY, metrics.TENANT_PASSES_IN_FLIGHT):
                with contextlib.suppress(KeyError):
                    gauge.remove(tenant)
        self._exported_tenants = present

    async def _release(self, key: PassKey) -> bool:
        value = self.mirror.ready.get(key)
        if value is None:
            found = await self._kv.get(key.ready_key)
            if found is None:
                self.mirror.remove(key.ready_key)
                return False  # withdrawn, or released by another replica
            value = found.value
        entry = events_pb2.OutboxRequest()
        try:
            entry.ParseFromString(value)
        except DecodeError:
            log.error("damaged ready entry dropped", extra={"key": key.ready_key})
            await self._purge(key.ready_key)
            return False
        await self._publish(key, entry)
        return True

    async def _publish(self, key: PassKey, entry: events_pb2.OutboxRequest) -> None:
        """Publish the request, then write its flight marker (holding the stream sequence, for withdraw).

        A publish JetStream reports as a duplicate went out before (another replica flushed the same
        outbox, or a release whose marker write was lost): that first release's marker counts it, so
        this one writes none and drops its ready entry. (Writing one could outlive the pass, when it
        ended before this replica heard of it, and hold a slot until the next rebuild.)
        """
        request = self.copies.attach(entry.request) if self.copies is not None else entry.request
        ack = await self.bus.publish(entry.subject, request, msg_id=entry.msg_id)
        if ack.duplicate:
            if key in self.mirror.ready:
                await self._purge(key.ready_key)
            self._ended_while_releasing.discard(key)
            return
        await self._kv.put(key.flight_key, str(ack.seq).encode())
        self.mirror.notes.written(key.flight_key)
        if key in self._ended_while_releasing:
            self._ended_while_releasing.discard(key)
            await self._purge(key.both)
        metrics.PASSES_RELEASED.inc()

    async def _purge(self, key_pattern: str) -> None:
        """Remove markers from KV and from the mirror: a key, ``sched.*.<pass>`` or ``sched.*.<tenant>.<job>.>``."""
        self.mirror.remove(key_pattern)
        await self._kv.remove(key_pattern)
        self.mirror.notes.removed(key_pattern)

    async def run(self, stop: asyncio.Event) -> None:
        """Release rounds until ``stop``: at once when woken (a pass queued or ended), else every interval."""
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.release_once()
            except MultipassError as error:
                if stop.is_set():
                    break  # shutting down: the connection went first
                log.warning("pass release round failed: %s", error, extra={"error": str(error)})
                self.mirror.synced_at = None  # read KV afresh next round
                await _pause(stop, min(1.0, self.interval))
            except Exception:
                log.exception("pass release round failed")
                self.mirror.synced_at = None
                await _pause(stop, min(1.0, self.interval))
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                stopper.cancel()

    # repair --------------------------------------------------------------------------------------

    async def reconcile(self, load_record) -> int:
        """Drop entries whose pass attempt is over (a crash between a pass's end and its markers' removal).

        ``load_record(tenant, job_id)`` returns the job record or None. Returns how many passes' entries went.
        """
        queues = await self.queues()
        entries = [(READY, k) for q in queues.ready.values() for k in q] + [
            (FLIGHT, k) for k in queues.flight
        ]
        records: dict[tuple[str, str], events_pb2.JobRecord | None] = {}
        removed = 0
        for kind, key in entries:
            job = (key.tenant, key.job_id)
            if job not in records:
                records[job] = await load_record(*job)
            if attempt_active(records[job], key):
                continue
            await self._purge(key.ready_key if kind == READY else key.both)
            removed += 1
        if removed:
            log.info("removed scheduler entries of ended passes", extra={"count": removed})
            self.wake()
        return removed


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
