"""Job records in NATS KV ``multipass-jobs``: compare-and-set transitions and the outbox.

``transition(tenant, job_id, fn)`` reads the record, applies the pure transition ``fn`` (from
:mod:`multipass_gateway.job_state`), commits its events and pass requests into the record's outbox and
writes it back on the revision it read; a conflicting writer makes it start over on the fresh record.
``flush`` then publishes the outbox (job events in sequence order, then pass requests; every publish
carries a Nats-Msg-Id, so publishing twice is harmless) and removes what was published, again by
compare-and-set. With a ``dispatch`` hook (the fair :class:`~multipass_gateway.scheduler.PassScheduler`)
pass requests go to their tenant's ready queue instead of straight to the work queue. A crash between the two leaves the outbox in the record; the next transition of the
job, a watcher noticing the gap, or the sweeper publishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from nats.js.kv import KeyValue

from multipass import subjects
from multipass.bus import Bus, nats_errors
from multipass.errors import Internal, NotFound
from multipass.v1 import events_pb2
from multipass_gateway import job_state, kv, names

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def job_event_msg_id(job_id: str, sequence: int) -> str:
    return f"{job_id}:job:{sequence}"


def parse_record(data: bytes, key: str) -> events_pb2.JobRecord:
    record = events_pb2.JobRecord()
    try:
        record.ParseFromString(data)
    except DecodeError as error:
        raise Internal(f"job record {key} is damaged") from error
    return record


#: Takes a pass request of a tenant's job instead of publishing it (enqueue for fair release).
Dispatch = Callable[[str, events_pb2.OutboxRequest], Awaitable[None]]


class JobStore:
    def __init__(self, bus: Bus, store: KeyValue, *, dispatch: Dispatch | None = None):
        self.bus = bus
        self.kv = store
        self.dispatch = dispatch

    async def create(self, record: events_pb2.JobRecord) -> int:
        """Store a new record; fails if the key exists."""
        with nats_errors("create job"):
            return await self.kv.create(
                names.job_key(record.tenant, record.job.job_id), record.SerializeToString()
            )

    async def load(self, tenant: str, job_id: str) -> events_pb2.JobRecord | None:
        try:
            key = names.job_key(tenant, subjects.check_token(job_id, "job_id"))
        except Exception:
            return None
        found = await kv.get(self.kv, key)
        return parse_record(found[0], key) if found is not None else None

    async def get(self, tenant: str, job_id: str) -> events_pb2.JobRecord:
        """The tenant's job; NotFound for a missing job and for another tenant's job alike."""
        record = await self.load(tenant, job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return record

    async def delete(self, tenant: str, job_id: str) -> None:
        await kv.delete(self.kv, names.job_key(tenant, job_id))

    async def job_ids(self, tenant: str) -> list[str]:
        """Every job id of ``tenant`` (ids sort by creation time)."""
        prefix = f"{tenant}."
        return [key[len(prefix) :] for key in await kv.keys(self.kv, f"{tenant}.*")]

    async def transition(
        self, tenant: str, job_id: str, fn: Callable[[events_pb2.JobRecord, datetime], job_state.Outcome]
    ) -> tuple[events_pb2.JobRecord, job_state.Outcome]:
        """Apply ``fn`` to the current record and write the result by compare-and-set (retried on conflict)."""
        key = names.job_key(tenant, job_id)
        result: dict[str, object] = {}

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                raise NotFound(f"job {job_id!r} does not exist")
            record = parse_record(current, key)
            moment = now()
            outcome = fn(record, moment)
            result["record"], result["outcome"] = record, outcome
            if not outcome.changed:
                return None
            job_state.commit(record, outcome, moment)
            return record.SerializeToString()

        await self.bus.kv_update(subjects.KV_JOBS, key, mutate)
        return result["record"], result["outcome"]  # type: ignore[return-value]

    async def flush(self, record: events_pb2.JobRecord) -> None:
        """Publish the record's outbox, then remove the published entries from the stored record."""
        if not record.outbox_events and not record.outbox_requests:
            return
        job_id = record.job.job_id
        last_event = 0
        for event in sorted(record.outbox_events, key=lambda e: e.sequence):
            await self.bus.publish(
                subjects.job_event_subject(job_id), event, msg_id=job_event_msg_id(job_id, event.sequence)
            )
            last_event = event.sequence
        published: list[tuple[str, int]] = []
        for entry in record.outbox_requests:
            if self.dispatch is not None:
                await self.dispatch(record.tenant, entry)
                published.append((entry.msg_id, 0))
                continue
            ack = await self.bus.publish(entry.subject, entry.request, msg_id=entry.msg_id)
            published.append((entry.msg_id, int(ack.seq or 0)))
        key = names.job_key(record.tenant, job_id)

        def mutate(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            fresh = parse_record(current, key)
            if not job_state.clear_outbox(fresh, last_event, published):
                return None
            return fresh.SerializeToString()

        await self.bus.kv_update(subjects.KV_JOBS, key, mutate)

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

        await self.bus.kv_update(subjects.KV_JOBS, key, mutate)
        return result.get("record")
