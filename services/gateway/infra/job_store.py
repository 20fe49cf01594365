"""Job records in NATS KV ``multipass-jobs``: compare-and-set transitions and the outbox.

``transition(tenant, job_id, fn)`` reads the record, applies the pure transition ``fn`` (from
:mod:`multipass_gateway.domain.job_state`), commits its events and pass requests into the record's outbox
and writes it back on the revision it read; a conflicting writer makes it start over on the fresh record.
``flush`` then publishes the outbox (job events in sequence order, each with a Nats-Msg-Id, so publishing
twice is harmless), hands the pass requests to ``dispatch`` (the pass scheduler's ready queues) and
removes what went out. That removal rides on the job's next write when one comes within
``clear_delay`` seconds (a pass's events usually follow its request within milliseconds), else it is a
write of its own; a terminal record's outbox is removed at once. A crash in between leaves the outbox in
the record; the next transition of the job, a watcher noticing the gap, or the sweeper publishes it again,
which is harmless (events carry their Nats-Msg-Id, a pass request is queued once per attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import Bus, KeyExists, KvBucket, RevisionMismatch
from multipass.errors import Internal, NotFound, Reason, Unavailable, echo
from multipass.v1 import events_pb2
from multipass_gateway.domain import job_state
from multipass_gateway.infra import metrics
from multipass_gateway.infra.local_job_events import LocalJobEvents

log = logging.getLogger(__name__)


#: Records from transition() whose revision is kept for their flush; a bound for callers that never flush.
_REMEMBERED_REVISIONS = 1024
#: Job records whose last value this replica remembers, to write without reading first.
_REMEMBERED_RECORDS = 2048
#: Seconds a published outbox waits in the stored record for the job's next write to remove it.
CLEAR_DELAY_SECONDS = 0.5
#: The record-write counter's children, bound once (every compare-and-set counts one).
_WRITTEN, _CONFLICT, _CONFIRM = (
    metrics.JOB_RECORD_WRITES.labels(outcome=outcome) for outcome in ("written", "conflict", "confirm")
)


def now() -> datetime:
    return datetime.now(UTC)


def job_event_msg_id(job_id: str, sequence: int) -> str:
    return f"{job_id}:job:{sequence}"


def _valid_key(tenant: str, job_id: str) -> str | None:
    """The record's KV key; None for an id no job can have (it then simply does not exist)."""
    try:
        return names.job_key(tenant, names.check_token(job_id, "job_id"))
    except Exception:
        return None


def parse_record(data: bytes, key: str) -> events_pb2.JobRecord:
    record = events_pb2.JobRecord()
    try:
        record.ParseFromString(data)
    except DecodeError as error:
        raise Internal(f"job record {key} is damaged") from error
    return record


#: Takes a pass request of a tenant's job (the pass scheduler queues it for fair release).
Dispatch = Callable[[str, events_pb2.OutboxRequest], Awaitable[None]]


@dataclass(frozen=True)
class Published:
    """What went out of a job's outbox and is still in its stored record: events up to a sequence, and
    pass requests by msg id."""

    last_event: int
    requests: frozenset[str]
    #: Loop time after which it is removed by a write of its own.
    due: float

    def clear(self, record: events_pb2.JobRecord) -> bool:
        return job_state.clear_outbox(record, self.last_event, self.requests)


class JobStore:
    def __init__(
        self, bus: Bus, store: KvBucket, *, dispatch: Dispatch, clear_delay: float = CLEAR_DELAY_SECONDS
    ):
        self.bus = bus
        self.kv = store
        self.dispatch = dispatch
        #: Seconds a published outbox may wait for the job's next write (0: removed by the flush itself).
        self.clear_delay = clear_delay
        #: key -> what this replica published from that record's outbox and has not removed yet.
        self._published: dict[str, Published] = {}
        self._clearing: asyncio.Task | None = None
        #: id(record) -> (record, KV revision) of records returned by transition and not flushed yet.
        self._revisions: dict[int, tuple[events_pb2.JobRecord, int]] = {}
        #: key -> (value, revision) this replica last wrote or read, most recent last (bounded).
        self._recent: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        #: This replica's watchers of jobs, handed the events of the outboxes it flushes.
        self.published_here = LocalJobEvents()

    # the compare-and-set loop ------------------------------------------------------------------------

    def _remember(self, key: str, value: bytes, revision: int) -> None:
        self._recent[key] = (value, revision)
        self._recent.move_to_end(key)
        while len(self._recent) > _REMEMBERED_RECORDS:
            self._recent.popitem(last=False)

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        entry = await self.kv.get(key)
        if entry is None:
            self._recent.pop(key, None)
            return None, 0
        self._remember(key, entry.value, entry.revision)
        return entry.value, entry.revision

    async def _compare_and_set(
        self, key: str, mutate: Callable[[bytes | None], bytes | None], *, attempts: int = 10
    ) -> tuple[bytes | None, int]:
        """Like :meth:`multipass.bus.KvBucket.compare_and_set` (``mutate`` may run several times), but starting from
        the value this replica last wrote or read when it has one: the write's compare-and-set on that
        revision proves it current, so the usual read before each write is saved. A stale guess costs
        one refused write and then a read; a guess that ``mutate`` leaves unchanged is confirmed by a read
        (unchanged on an old value does not mean unchanged on the current one)."""
        guess = self._recent.get(key)
        for _ in range(attempts):
            if guess is not None:
                (current, revision), guess, guessed = guess, None, True
            else:
                (current, revision), guessed = await self._read(key), False
            new = mutate(current)
            if new is None:
                if guessed:
                    _CONFIRM.inc()
                    continue  # confirm on the stored value
                return current, revision
            try:
                if revision == 0:
                    revision = await self.kv.create(key, new)
                else:
                    revision = await self.kv.update(key, new, revision=revision)
            except (KeyExists, RevisionMismatch):
                _CONFLICT.inc()
                continue  # written meanwhile
            _WRITTEN.inc()
            self._remember(key, new, revision)
            return new, revision
        raise Unavailable(f"{key}: {attempts} conflicting updates in a row")

    async def create(self, record: events_pb2.JobRecord) -> int:
        """Store a new record; fails if the key exists."""
        key, value = names.job_key(record.tenant, record.job.job_id), record.SerializeToString()
        revision = await self.kv.create(key, value)
        self._remember(key, value, revision)
        return revision

    def recent(self, tenant: str, job_id: str) -> events_pb2.JobRecord | None:
        """The record as this replica last wrote or read it, without a round trip; None when it has not
        (or no longer) held it. Another replica may have written since: callers use it only for what a
        stale record cannot make wrong, or check it and :meth:`load` when it does not fit."""
        key = _valid_key(tenant, job_id)
        if key is None:
            return None
        held = self._recent.get(key)
        return parse_record(held[0], key) if held is not None else None

    async def load(self, tenant: str, job_id: str) -> events_pb2.JobRecord | None:
        key = _valid_key(tenant, job_id)
        if key is None:
            return None
        found = await self.kv.get(key)
        if found is None:
            return None
        self._remember(key, found.value, found.revision)
        return parse_record(found.value, key)

    async def get(self, tenant: str, job_id: str) -> events_pb2.JobRecord:
        """The tenant's job; NotFound for a missing job and for another tenant's job alike."""
        record = await self.load(tenant, job_id)
        if record is None:
            raise NotFound(
                f"job {echo(job_id)} does not exist", reason=Reason.UNKNOWN_JOB, metadata={"jobId": job_id}
            )
        return record

    async def delete(self, tenant: str, job_id: str) -> None:
        self._recent.pop(names.job_key(tenant, job_id), None)
        await self.kv.delete(names.job_key(tenant, job_id))

    async def job_ids(self, tenant: str) -> list[str]:
        """Every job id of ``tenant`` (ids sort by creation time)."""
        prefix = f"{tenant}."
        return [key[len(prefix) :] for key in await self.kv.keys(f"{tenant}.*")]

    async def transition(
        self, tenant: str, job_id: str, fn: Callable[[events_pb2.JobRecord, datetime], job_state.Outcome]
    ) -> tuple[events_pb2.JobRecord, job_state.Outcome]:
        """Apply ``fn`` to the current record and write the result by compare-and-set (retried on conflict).

        The returned record is the one stored (or read, when ``fn`` changed nothing); its KV revision
        is remembered for :meth:`flush`, which can then clear the outbox without reading it again.
        """
        record, (outcome,) = await self.transition_many(tenant, job_id, [fn])
        return record, outcome

    async def transition_many(
        self,
        tenant: str,
        job_id: str,
        fns: Sequence[Callable[[events_pb2.JobRecord, datetime], job_state.Outcome]],
    ) -> tuple[events_pb2.JobRecord, list[job_state.Outcome]]:
        """Apply several transitions in order, each committed before the next sees the record, and write
        them by one compare-and-set: what their one-by-one application would store, in one round trip."""
        key = names.job_key(tenant, job_id)
        result: dict[str, object] = {}

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                raise NotFound(
                    f"job {echo(job_id)} does not exist",
                    reason=Reason.UNKNOWN_JOB,
                    metadata={"jobId": job_id},
                )
            record = parse_record(current, key)
            published = result["published"] = self._published.get(key)
            if published is not None:
                published.clear(record)  # written with the transition, if it changes anything
            outcomes = []
            changed = False
            for fn in fns:
                moment = now()
                outcome = fn(record, moment)
                if outcome.changed:
                    job_state.commit(record, outcome, moment)
                    changed = True
                outcomes.append(outcome)
            result["record"], result["outcomes"] = record, outcomes
            return record.SerializeToString() if changed else None

        _value, revision = await self._compare_and_set(key, mutate)
        record = result["record"]
        applied = result["published"]
        written = any(outcome.changed for outcome in result["outcomes"])  # type: ignore[attr-defined]
        if written and applied is not None and self._published.get(key) is applied:
            del self._published[key]  # removed from the record by this write
        self._revisions[id(record)] = (record, revision)  # type: ignore[assignment]
        while len(self._revisions) > _REMEMBERED_REVISIONS:  # transitions never flushed (errors)
            del self._revisions[next(iter(self._revisions))]
        return record, result["outcomes"]  # type: ignore[return-value]

    async def flush(self, record: events_pb2.JobRecord) -> None:
        """Publish the record's outbox, then remove the published entries from the stored record.

        Job events are published in sequence order and their acknowledgements awaited together with
        the dispatch of the pass requests. When ``record`` came from :meth:`transition` its revision
        is known, so the outbox is cleared by one compare-and-set on that revision (a writer in between
        makes it read the record afresh, as before).
        """
        known = self._revisions.pop(id(record), None)
        revision = known[1] if known is not None and known[0] is record else None
        if not record.outbox_events and not record.outbox_requests:
            return
        job_id = record.job.job_id
        events = sorted(record.outbox_events, key=lambda e: e.sequence)
        entries = list(record.outbox_requests)
        # The events are stored already (in the record's outbox, whose write came first): this replica's
        # watchers get them now, the stream's copies follow.
        self.published_here.published(job_id, events)
        # Events (for clients) and pass requests (for the scheduler) depend on nothing of each other's:
        # they go out together, the events in sequence order among themselves.
        await asyncio.gather(
            *(
                self.bus.publish(
                    names.job_event_subject(job_id), event, msg_id=job_event_msg_id(job_id, event.sequence)
                )
                for event in events
            ),
            *(self.dispatch(record.tenant, entry) for entry in entries),
        )
        last_event = events[-1].sequence if events else 0
        published = [entry.msg_id for entry in entries]
        key = names.job_key(record.tenant, job_id)
        earlier = self._published.pop(key, None)
        if earlier is not None:  # what this replica published before, not removed yet: remove it too
            last_event = max(last_event, earlier.last_event)
            published = [*published, *earlier.requests]
        if self.clear_delay > 0 and not job_state.is_terminal(record):
            self._defer_clear(key, last_event, published)
            return
        if revision:
            cleared = events_pb2.JobRecord()
            cleared.CopyFrom(record)
            if not job_state.clear_outbox(cleared, last_event, published):
                return
            value = cleared.SerializeToString()
            try:
                self._remember(key, value, await self.kv.update(key, value, revision=revision))
                return
            except RevisionMismatch:
                pass  # written meanwhile: clear the fresh record below

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            fresh = parse_record(current, key)
            if not job_state.clear_outbox(fresh, last_event, published):
                return None
            return fresh.SerializeToString()

        await self._compare_and_set(key, mutate)

    # removing what was published ------------------------------------------------------------------

    def _defer_clear(self, key: str, last_event: int, requests: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        self._published[key] = Published(last_event, frozenset(requests), loop.time() + self.clear_delay)
        if self._clearing is None or self._clearing.done():
            self._clearing = asyncio.ensure_future(self._clear_when_due())

    async def _clear_when_due(self) -> None:
        """Remove, by writes of their own, the published outboxes no transition removed in time."""
        loop = asyncio.get_running_loop()
        while self._published:
            now = loop.time()
            due = [key for key, published in self._published.items() if published.due <= now]
            if not due:
                await asyncio.sleep(min(p.due for p in self._published.values()) - now)
                continue
            await asyncio.gather(*(self._clear(key) for key in due))

    async def _clear(self, key: str) -> None:
        published = self._published.get(key)
        if published is None:
            return

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            fresh = parse_record(current, key)
            return fresh.SerializeToString() if published.clear(fresh) else None

        try:
            await self._compare_and_set(key, mutate)
        except Exception as error:  # noqa: BLE001 - the next transition or the sweeper publishes it again
            log.warning("published outbox not removed", extra={"key": key, "error": str(error)})
        if self._published.get(key) is published:
            del self._published[key]

    async def close(self) -> None:
        """Remove every published outbox still waiting for a write (before the connection closes)."""
        if self._clearing is not None:
            self._clearing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clearing
        await asyncio.gather(*(self._clear(key) for key in list(self._published)))

    async def flush_key(self, tenant: str, job_id: str) -> events_pb2.JobRecord | None:
        """Publish whatever the stored record still holds in its outbox."""
        record = await self.load(tenant, job_id)
        if record is not None:
            await self.flush(record)
        return record

    async def update(
        self, tenant: str, job_id: str, fn: Callable[[events_pb2.JobRecord], bool]
    ) -> events_pb2.JobRecord | None:
        """Change fields that emit no job events (callback bookkeeping); ``fn`` returns whether it changed
        anything. Returns the record as written (or as read when unchanged); None when the job is gone."""
        key = names.job_key(tenant, job_id)
        result: dict[str, events_pb2.JobRecord] = {}

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            record = parse_record(current, key)
            result["record"] = record
            if not fn(record):
                return None
            record.job.updated_at.FromDatetime(now())
            return record.SerializeToString()

        await self._compare_and_set(key, mutate)
        return result.get("record")
