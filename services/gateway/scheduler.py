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

Releasing one pass = publish (deduplicated by its Nats-Msg-Id), then write its flight marker; the ready
entry stays beside it until the pass ends, when one purge of ``sched.*.<pass>`` removes both (a ready
entry with a flight marker is in flight, not waiting). A replica that dies between publish and flight
marker leaves the ready entry alone, and the next round publishes it again, which JetStream drops as a
duplicate. Markers are removed by purging their subjects (no tombstones), so a listing stays as long
as the live queues.

Release rounds do not list KV: each replica keeps a :class:`QueueMirror` of the markers, changed by its
own writes at once, by the other replicas' notes (:mod:`multipass_gateway.replica_notes`) and rebuilt
from a KV listing every ``resync_interval`` seconds. With one replica the mirror is exact, and so are
the bounds; several replicas may release concurrently, each counting what its mirror shows, so the
bounds may be overshot by the releases of rounds running at the same moment (a note in transit), as
when each round listed KV. Each replica releases the ready entries it queued itself (and entries
nobody announced, or whose announcer has not released them for two resync intervals: it died), so two
replicas do not race to publish the same pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
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
from multipass_gateway.replica_notes import ReplicaNotes

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
    """What KV held: ready passes not released yet, per tenant, and passes in flight."""

    ready: dict[str, list[PassKey]]
    flight: list[PassKey]

    @property
    def in_flight(self) -> Counter:
        return Counter(key.tenant for key in self.flight)


def _parse_marker(name: str) -> tuple[str, PassKey] | None:
    """("ready" | "flight", key) of a KV key ``sched.<head>.<pass>``; None for anything else."""
    if not name.startswith("sched."):
        return None
    head, _, suffix = name[len("sched.") :].partition(".")
    if head not in ("ready", "flight"):
        return None
    key = PassKey.parse(suffix)
    return (head, key) if key is not None else None


def _both(key: PassKey) -> str:
    """The pattern of a pass's ready entry and flight marker together."""
    return f"sched.*.{key.suffix}"


def _job_pattern(tenant: str, job_id: str) -> str:
    return f"sched.*.{tenant}.{job_id}.>"


class QueueMirror:
    """This replica's picture of the ready entries and flight markers, so a round needs no KV listing.

    Updated synchronously by the replica's own writes (before their KV round trips complete, so two
    rounds never plan the same pass), by other replicas' notes, and rebuilt from a KV listing every
    resync interval. A resync keeps the changes that happened while it listed (they are replayed on top
    of the listing) and the releases still in progress (their flight markers may not be written yet).
    ``foreign`` holds ready entries another replica announced: that replica releases them, unless they
    are still waiting after ``orphan_after`` seconds (it died), when any replica may.
    """

    def __init__(self) -> None:
        self.ready: dict[PassKey, bytes | None] = {}
        self.flight: set[PassKey] = set()
        self.foreign: dict[PassKey, float] = {}
        self.releasing: set[PassKey] = set()
        self._log: list[tuple[str, str, bytes | None]] | None = None

    # changes ---------------------------------------------------------------------------------------

    def add_ready(self, key: PassKey, value: bytes | None, *, foreign: bool = False) -> None:
        self._record("+ready", key.suffix, value)
        self._add_ready(key, value, foreign=foreign)

    def _add_ready(self, key: PassKey, value: bytes | None, *, foreign: bool = False) -> None:
        known = key in self.ready
        if not known or value is not None:
            self.ready[key] = value
        if not foreign:
            self.foreign.pop(key, None)
        elif not known:
            # A pass this replica queued itself stays its own, even when a peer queued it too (both
            # flushed the same outbox): else each could wait for the other to release it.
            self.foreign[key] = time.monotonic()

    def add_flight(self, key: PassKey) -> None:
        self._record("+flight", key.suffix, None)
        self.flight.add(key)

    def remove(self, pattern: str) -> None:
        """Forget what a purge of ``pattern`` removes: a marker key, ``sched.*.<pass>`` or a job's
        ``sched.*.<tenant>.<job_id>.>``."""
        self._record("-", pattern, None)
        self._remove(pattern)

    def _remove(self, pattern: str) -> None:
        if pattern.startswith("sched.*."):
            rest = pattern[len("sched.*.") :]
            if rest.endswith(".>"):
                tenant, _, job_id = rest.removesuffix(".>").partition(".")
                gone = [k for k in (*self.ready, *self.flight) if k.tenant == tenant and k.job_id == job_id]
                heads = ("ready", "flight")
            else:
                key = PassKey.parse(rest)
                gone, heads = ([key] if key is not None else []), ("ready", "flight")
        else:
            parsed = _parse_marker(pattern)
            if parsed is None:
                return
            gone, heads = [parsed[1]], (parsed[0],)
        for key in gone:
            if "ready" in heads:
                self.ready.pop(key, None)
                self.foreign.pop(key, None)
            if "flight" in heads:
                self.flight.discard(key)

    def _record(self, op: str, what: str, value: bytes | None) -> None:
        if self._log is not None:
            self._log.append((op, what, value))

    # resync ----------------------------------------------------------------------------------------

    def begin_resync(self) -> None:
        self._log = []

    def abort_resync(self) -> None:
        self._log = None

    def finish_resync(self, names: list[str]) -> None:
        """Replace the picture with the listing ``names`` (KV keys), then replay what changed meanwhile."""
        changes, self._log = self._log or [], None
        known, foreign = self.ready, self.foreign
        self.ready, self.flight, self.foreign = {}, set(), {}
        for name in names:
            parsed = _parse_marker(name)
            if parsed is None:
                continue
            head, key = parsed
            if head == "ready":
                self.ready[key] = known.get(key)
                if key in foreign:
                    self.foreign[key] = foreign[key]
            else:
                self.flight.add(key)
        self.flight.update(self.releasing)
        for op, what, value in changes:
            if op == "-":
                self._remove(what)
                continue
            key = PassKey.parse(what)
            if key is None:
                continue
            if op == "+ready":
                self._add_ready(key, value if value is not None else known.get(key), foreign=key in foreign)
            else:
                self.flight.add(key)

    # reading ---------------------------------------------------------------------------------------

    def queues(self, orphan_after: float) -> tuple[dict[str, list[PassKey]], list[PassKey]]:
        """(ready passes this replica may release, per tenant in queue order; passes in flight)."""
        now = time.monotonic()
        ready: dict[str, list[PassKey]] = {}
        for key in self.ready:
            if key in self.flight or key in self.releasing:
                continue
            if key not in self.foreign or now - self.foreign[key] > orphan_after:
                ready.setdefault(key.tenant, []).append(key)
        for queue in ready.values():
            queue.sort()
        return ready, list(self.flight)

    def waiting(self) -> int:
        return sum(1 for key in self.ready if key not in self.flight)


class PassScheduler:
    def __init__(
        self,
        bus: Bus,
        store: KeyValue,
        *,
        tenant_limit: int,
        global_limit: int,
        interval: float = 1.0,
        resync_interval: float = 5.0,
        notes: ReplicaNotes | None = None,
    ):
        if tenant_limit < 1 or global_limit < 1:
            raise ValueError("in-flight limits must be >= 1")
        self.bus = bus
        self._kv = store
        self.tenant_limit = tenant_limit
        self.global_limit = global_limit
        self.interval = interval
        self.resync_interval = resync_interval
        self.notes = notes or ReplicaNotes(None)
        self.notes.listen(self._on_note)
        self.mirror = QueueMirror()
        self._synced_at: float | None = None
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
            log.warning("pass request with unschedulable names published directly", extra={"key": key})
            await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
            return
        if key in self._recently_ended:
            return  # an outbox published again after its pass ended (a retry is a new attempt)
        value = entry.SerializeToString()
        with nats_errors("queue pass request"):
            try:
                await self._kv.create(key.ready_key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # already queued
            except nats.js.errors.KeyNotFoundError:
                # It existed, and was removed while nats-py looked at it: its pass ended or its job
                # was withdrawn meanwhile, so there is nothing to queue.
                return
            except nats.js.errors.BadRequestError as error:
                if error.err_code != 10071:  # wrong last sequence: the key exists
                    raise
        self.mirror.add_ready(key, value)
        self.notes.written(key.ready_key)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def done(self, key: PassKey) -> None:
        """The pass attempt ended: its slot is free (its ready entry and flight marker go)."""
        if key.valid:
            self._ended(key)
            await self._purge(_both(key))
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
        if not (_TOKEN.match(tenant) and _TOKEN.match(job_id)):
            return 0
        self.mirror.remove(_job_pattern(tenant, job_id))  # no round releases them from now on
        withdrawn = 0
        if delete_released:
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
        await self._purge(_job_pattern(tenant, job_id))
        self.wake()
        return withdrawn

    # mirror upkeep --------------------------------------------------------------------------------

    def _on_note(self, op: str, name: str, _value: str) -> None:
        """Another replica wrote or removed scheduler markers."""
        if not name.startswith("sched."):
            return
        if op == "-":
            if name.startswith("sched.*.") and not name.endswith(".>"):
                key = PassKey.parse(name[len("sched.*.") :])
                if key is not None:
                    self._ended(key)
            self.mirror.remove(name)
            self.wake()  # a slot may have come free
            return
        parsed = _parse_marker(name)
        if parsed is None:
            return
        head, key = parsed
        if head == "ready":
            self.mirror.add_ready(key, None, foreign=True)
        elif key not in self._recently_ended:
            self.mirror.add_flight(key)

    async def resync(self) -> None:
        """Rebuild the mirror from KV (the durable truth): catches what notes missed and other crashes."""
        self.mirror.begin_resync()
        try:
            names = await kv.purged_keys(self._kv, "sched.>")
        except BaseException:
            self.mirror.abort_resync()
            raise
        self.mirror.finish_resync(names)
        self._synced_at = now = time.monotonic()
        # Flight markers written after their pass had ended (see _ended) go now, not at the next sweep.
        leftovers = [
            k for k in self.mirror.flight if k in self._recently_ended and k not in self.mirror.releasing
        ]
        keep = 2 * self.resync_interval
        self._recently_ended = {k: t for k, t in self._recently_ended.items() if now - t < keep}
        for key in leftovers:
            await self._purge(_both(key))

    # releasing -----------------------------------------------------------------------------------

    async def queues(self) -> Queues:
        """What KV holds now (a listing; the release rounds read the mirror instead)."""
        ready: dict[str, list[PassKey]] = {}
        flight: list[PassKey] = []
        waiting: list[PassKey] = []
        for name in await kv.purged_keys(self._kv, "sched.>"):
            parsed = _parse_marker(name)
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
            if self._synced_at is None or time.monotonic() - self._synced_at >= self.resync_interval:
                await self.resync()
            ready, flight = self.mirror.queues(orphan_after=2 * self.resync_interval)
            plan = plan_release(
                ready,
                Counter(key.tenant for key in flight),
                tenant_limit=self.tenant_limit,
                global_limit=self.global_limit,
                after=self._last_tenant,
            )
            for key in plan:
                self.mirror.releasing.add(key)
                self.mirror.add_flight(key)
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
            gateway_metrics.PASSES_READY.set(self.mirror.waiting())
            gateway_metrics.PASSES_IN_FLIGHT.set(len(self.mirror.flight))
            if failure is not None:
                raise failure
            return released

    async def _release(self, key: PassKey) -> bool:
        value = self.mirror.ready.get(key)
        if value is None:
            found = await kv.get(self._kv, key.ready_key)
            if found is None:
                self.mirror.remove(key.ready_key)
                return False  # withdrawn, or released by another replica
            value = found[0]
        entry = events_pb2.OutboxRequest()
        try:
            entry.ParseFromString(value)
        except DecodeError:
            log.error("damaged ready entry dropped", extra={"key": key.ready_key})
            await self._purge(key.ready_key)
            return False
        ack = await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
        with nats_errors("mark pass in flight"):
            await self._kv.put(key.flight_key, str(int(ack.seq or 0)).encode())
        self.notes.written(key.flight_key)
        if key in self._ended_while_releasing:
            self._ended_while_releasing.discard(key)
            await self._purge(_both(key))
        gateway_metrics.PASSES_RELEASED.inc()
        return True

    async def _purge(self, key_pattern: str) -> None:
        """Remove markers from KV and from the mirror: a key, ``sched.*.<pass>`` or ``sched.*.<tenant>.<job>.>``."""
        self.mirror.remove(key_pattern)
        await kv.remove(self._kv, key_pattern)
        self.notes.removed(key_pattern)

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
                self._synced_at = None  # read KV afresh next round
                await _pause(stop, min(1.0, self.interval))
            except Exception:
                log.exception("pass release round failed")
                self._synced_at = None
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
            record = records[job]
            if record is not None and not job_state.is_terminal(record) and _attempt_active(record, key):
                continue
            await self._purge(key.ready_key if kind == READY else _both(key))
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
