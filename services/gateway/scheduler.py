"""Fair release of pass requests: per-tenant ready queues in KV, round-robin across tenants, bounded in flight.

JetStream's work queue hands out messages first in, first out, so a tenant that submits a hundred jobs
would put every other tenant's one job behind all of its passes. The gateway therefore does not publish
a pass request when the job's transition makes it: :class:`PassScheduler` keeps it in a *ready* queue
(KV ``multipass-jobs``, so a restart loses nothing) and releases ready passes to JetStream round-robin
across tenants, never more than ``tenant_max_passes_in_flight`` of one tenant nor
``max_passes_in_flight`` in all. A released pass stays *in flight* until its pass ends (completed,
failed for good, or its job ended); JetStream's queue thus holds at most the in-flight bound, and a
newcomer's pass waits behind at most that many others.

Keys (in bucket ``multipass-jobs``; ``<pass>`` = ``<tenant>.<job_id>.<image>.<pass name>.<attempt>``):

* ``sched.ready.<pass>``: the :class:`OutboxRequest` (subject, Nats-Msg-Id, request) waiting for a slot;
* ``sched.flight.<pass>``: the stream sequence of the published request (0 until known), for cancel.

Releasing one pass = publish (deduplicated by its Nats-Msg-Id), write its flight marker, then remove
its ready entry. A replica that dies in between leaves the ready entry, and the next round publishes it
again, which JetStream drops as a duplicate. Several replicas may release concurrently: each counts
what KV showed it at the start of its round, so the bounds are exact with one replica and may be
overshot by a round's releases with several. Markers are removed by purging their subject (no
tombstones), so the listing each round reads stays as small as the live queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js.kv import KeyValue

from multipass import subjects
from multipass.bus import Bus, nats_errors
from multipass.errors import MultipassError
from multipass.v1 import events_pb2
from multipass_gateway import gateway_metrics, job_state, kv

log = logging.getLogger(__name__)

READY = "sched.ready"
FLIGHT = "sched.flight"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True, order=True)
class PassKey:
    """One attempt of one pass of one job; orders a tenant's queue (older jobs first)."""

    tenant: str
    job_id: str
    image: int
    pass_name: str
    attempt: int

    @property
    def suffix(self) -> str:
        return f"{self.tenant}.{self.job_id}.{self.image}.{self.pass_name}.{self.attempt}"

    @property
    def ready_key(self) -> str:
        return f"{READY}.{self.suffix}"

    @property
    def flight_key(self) -> str:
        return f"{FLIGHT}.{self.suffix}"

    @property
    def valid(self) -> bool:
        return all(_TOKEN.match(part) for part in (self.tenant, self.job_id, self.pass_name)) and (
            self.image >= 0 and self.attempt >= 0
        )

    @classmethod
    def of_request(cls, tenant: str, request) -> PassKey:
        return cls(tenant, request.job_id, request.image_index, request.pass_name, request.attempt)

    @classmethod
    def parse(cls, suffix: str) -> PassKey | None:
        parts = suffix.split(".")
        if len(parts) != 5:
            return None
        tenant, job_id, image, pass_name, attempt = parts
        try:
            key = cls(tenant, job_id, int(image), pass_name, int(attempt))
        except ValueError:
            return None
        return key if key.valid else None


# --- the policy (pure) ----------------------------------------------------------------------------------


def plan_release(
    ready: Mapping[str, Sequence[PassKey]],
    in_flight: Mapping[str, int],
    *,
    tenant_limit: int,
    global_limit: int,
    after: str | None = None,
) -> list[PassKey]:
    """Which ready passes to release now, in release order.

    Tenants take turns, one pass per turn, starting with the first tenant (in name order, cyclically)
    after ``after`` (the tenant served last, so no tenant is favoured by its name). A tenant's passes
    leave its queue in queue order. A tenant with ``tenant_limit`` passes in flight waits; nothing is
    released once ``global_limit`` passes are in flight.
    """
    tenants = sorted(t for t, queue in ready.items() if queue)
    if not tenants:
        return []
    start = next((i for i, t in enumerate(tenants) if after is not None and t > after), 0)
    order = tenants[start:] + tenants[:start]
    flying = Counter({t: n for t, n in in_flight.items() if n > 0})
    total = sum(flying.values())
    position = dict.fromkeys(order, 0)
    released: list[PassKey] = []
    progress = True
    while progress and total < global_limit:
        progress = False
        for tenant in order:
            if total >= global_limit:
                break
            queue = ready[tenant]
            if position[tenant] >= len(queue) or flying[tenant] >= tenant_limit:
                continue
            released.append(queue[position[tenant]])
            position[tenant] += 1
            flying[tenant] += 1
            total += 1
            progress = True
    return released


# --- the scheduler ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queues:
    """What KV held at the start of a round."""

    ready: dict[str, list[PassKey]]
    flight: list[PassKey]

    @property
    def in_flight(self) -> Counter:
        return Counter(key.tenant for key in self.flight)


class PassScheduler:
    def __init__(
        self,
        bus: Bus,
        store: KeyValue,
        *,
        tenant_limit: int,
        global_limit: int,
        interval: float = 1.0,
    ):
        if tenant_limit < 1 or global_limit < 1:
            raise ValueError("in-flight limits must be >= 1")
        self.bus = bus
        self._kv = store
        self.tenant_limit = tenant_limit
        self.global_limit = global_limit
        self.interval = interval
        self._wake = asyncio.Event()
        self._last_tenant: str | None = None
        self._round = asyncio.Lock()

    # queueing ------------------------------------------------------------------------------------

    async def enqueue(self, tenant: str, entry: events_pb2.OutboxRequest) -> None:
        """Put a pass request into its tenant's ready queue (a second enqueue of the same attempt is a no-op)."""
        key = PassKey.of_request(tenant, entry.request)
        if not key.valid:
            # Names the planner never makes; publishing directly keeps such a pass from being stuck.
            log.warning("pass request with unschedulable names published directly", extra={"key": key})
            await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
            return
        with nats_errors("queue pass request"):
            try:
                await self._kv.create(key.ready_key, entry.SerializeToString())
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # already queued
            except nats.js.errors.BadRequestError as error:
                if error.err_code != 10071:  # wrong last sequence: the key exists
                    raise
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def done(self, key: PassKey) -> None:
        """The pass attempt ended: its slot is free."""
        if key.valid:
            await self._purge(key.flight_key)
            self.wake()

    async def withdraw(self, tenant: str, job_id: str) -> int:
        """Forget every queued pass of the job and delete its released requests from the work queue.

        Returns how many released requests were deleted before a worker finished them (cancel).
        """
        if not (_TOKEN.match(tenant) and _TOKEN.match(job_id)):
            return 0
        await self._purge(f"{READY}.{tenant}.{job_id}.>")
        withdrawn = 0
        for _key, value in await kv.entries(self._kv, f"{FLIGHT}.{tenant}.{job_id}.>"):
            try:
                sequence = int(value or b"0")
            except ValueError:
                sequence = 0
            if sequence > 0:
                try:
                    withdrawn += bool(await self.bus.js.delete_msg(subjects.STREAM_PASSES, sequence))
                except Exception as error:  # noqa: BLE001 - already done and acked: nothing to withdraw
                    log.debug(
                        "pass request not withdrawn", extra={"sequence": sequence, "error": repr(error)}
                    )
        await self._purge(f"{FLIGHT}.{tenant}.{job_id}.>")
        self.wake()
        return withdrawn

    # releasing -----------------------------------------------------------------------------------

    async def queues(self) -> Queues:
        ready: dict[str, list[PassKey]] = {}
        flight: list[PassKey] = []
        for name in await kv.keys(self._kv, "sched.>"):
            head, _, suffix = name.partition(".")[2].partition(".")
            key = PassKey.parse(suffix)
            if key is None:
                continue
            if head == "ready":
                ready.setdefault(key.tenant, []).append(key)
            elif head == "flight":
                flight.append(key)
        for queue in ready.values():
            queue.sort()
        return Queues(ready=ready, flight=flight)

    async def release_once(self) -> int:
        """One round: read the queues, release what the policy allows. Returns how many were released."""
        async with self._round:
            queues = await self.queues()
            flying = {key.suffix for key in queues.flight}
            # A ready entry with a flight marker was published by a round that died before removing it.
            ready = {t: [k for k in q if k.suffix not in flying] for t, q in queues.ready.items()}
            stale = [k for q in queues.ready.values() for k in q if k.suffix in flying]
            plan = plan_release(
                ready,
                queues.in_flight,
                tenant_limit=self.tenant_limit,
                global_limit=self.global_limit,
                after=self._last_tenant,
            )
            released = 0
            for key in [*stale, *plan]:
                if await self._release(key):
                    released += 1
                    self._last_tenant = key.tenant
            waiting = sum(len(q) for q in ready.values()) - len(plan)
            gateway_metrics.PASSES_READY.set(max(0, waiting))
            gateway_metrics.PASSES_IN_FLIGHT.set(len(queues.flight) + len(plan))
            return released

    async def _release(self, key: PassKey) -> bool:
        found = await kv.get(self._kv, key.ready_key)
        if found is None:
            return False  # withdrawn, or released by another replica
        entry = events_pb2.OutboxRequest()
        try:
            entry.ParseFromString(found[0])
        except DecodeError:
            log.error("damaged ready entry dropped", extra={"key": key.ready_key})
            await self._purge(key.ready_key)
            return False
        ack = await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
        with nats_errors("mark pass in flight"):
            await self._kv.put(key.flight_key, str(int(ack.seq or 0)).encode())
        await self._purge(key.ready_key)
        gateway_metrics.PASSES_RELEASED.inc()
        return True

    async def _purge(self, key_pattern: str) -> None:
        await kv.remove(self._kv, key_pattern)

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
                await _pause(stop, min(1.0, self.interval))
            except Exception:
                log.exception("pass release round failed")
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
        """Drop entries whose pass attempt is over (a crash between a pass's end and its marker's removal).

        ``load_record(tenant, job_id)`` returns the job record or None. Returns how many entries went.
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
            record = records[job]
            if record is not None and not job_state.is_terminal(record) and _attempt_active(record, key):
                continue
            await self._purge(key.ready_key if kind == READY else key.flight_key)
            removed += 1
        if removed:
            log.info("removed scheduler entries of ended passes", extra={"count": removed})
            self.wake()
        return removed


def _attempt_active(record: events_pb2.JobRecord, key: PassKey) -> bool:
    index = job_state.find_pass(record, key.image, key.pass_name)
    if index is None:
        return False
    state = record.job.images[key.image].passes[index]
    return state.attempt == key.attempt and state.status in job_state.ACTIVE_PASS


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
