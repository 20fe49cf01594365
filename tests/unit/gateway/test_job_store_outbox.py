"""The job store's outbox: what a flush published leaves the stored record with the job's next write, or by
a write of its own when none comes in time; a terminal record's outbox goes at once."""

from __future__ import annotations

import asyncio

import pytest

from multipass import names
from multipass.bus import KeyExists, KvEntry, PublishAck, RevisionMismatch
from multipass.v1 import events_pb2, jobs_pb2
from multipass_gateway.domain import job_state
from multipass_gateway.infra.job_store import JobStore

TENANT, JOB = "t1", "j1"
KEY = names.job_key(TENANT, JOB)


class RevisionedKv:
    """get / create / update with revisions over a dict, counting the writes."""

    def __init__(self):
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.writes = 0

    async def get(self, key: str) -> KvEntry | None:
        found = self.data.get(key)
        return KvEntry(key, found[0], found[1]) if found else None

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyExists(key)
        return self._write(key, value)

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        if self.data[key][1] != revision:
            raise RevisionMismatch(key)
        return self._write(key, value)

    def _write(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.writes += 1
        self.data[key] = (value, self.revision)
        return self.revision


class RecordingBus:
    def __init__(self):
        self.published: list[str] = []

    async def publish(self, subject, message, *, msg_id, **_):
        self.published.append(msg_id)
        return PublishAck(stream="MULTIPASS_JOB_EVENTS", seq=len(self.published), duplicate=False)


def stored(kv: RevisionedKv) -> events_pb2.JobRecord:
    record = events_pb2.JobRecord()
    record.ParseFromString(kv.data[KEY][0])
    return record


def step(name: str, *, finish: bool = False):
    """A transition emitting one event and queueing the pass ``name`` (or finishing the job)."""

    def apply(record: events_pb2.JobRecord, _now) -> job_state.Outcome:
        if finish:
            record.job.state = jobs_pb2.JOB_STATE_SUCCEEDED
        else:
            record.outbox_requests.add(subject="multipass.pass.diffusion.tiny", msg_id=f"{JOB}:{name}:1")
        return job_state.Outcome(changed=True, events=[jobs_pb2.JobEvent()], finished=finish)

    return apply


async def store_with_job(clear_delay: float) -> tuple[JobStore, RevisionedKv, RecordingBus, list[str]]:
    kv, bus, dispatched = RevisionedKv(), RecordingBus(), []

    async def dispatch(tenant: str, entry: events_pb2.OutboxRequest) -> None:
        dispatched.append(entry.msg_id)

    jobs = JobStore(bus, kv, dispatch=dispatch, clear_delay=clear_delay)  # type: ignore[arg-type]
    record = events_pb2.JobRecord(
        tenant=TENANT, job=jobs_pb2.Job(job_id=JOB, state=jobs_pb2.JOB_STATE_RUNNING)
    )
    await jobs.create(record)
    return jobs, kv, bus, dispatched


async def test_what_a_flush_published_leaves_the_record_with_the_next_transition_in_the_same_write():
    jobs, kv, bus, dispatched = await store_with_job(clear_delay=30.0)
    record, _ = await jobs.transition(TENANT, JOB, step("base"))
    await jobs.flush(record)
    assert bus.published == [f"{JOB}:job:1"] and dispatched == [f"{JOB}:base:1"]
    writes = kv.writes
    assert stored(kv).outbox_requests  # still there: the next write takes it out

    record, _ = await jobs.transition(TENANT, JOB, step("segment"))
    assert kv.writes == writes + 1  # one write: the transition, with the published entries gone
    assert [e.sequence for e in stored(kv).outbox_events] == [2]
    assert [r.msg_id for r in stored(kv).outbox_requests] == [f"{JOB}:segment:1"]
    await jobs.flush(record)
    assert bus.published == [f"{JOB}:job:1", f"{JOB}:job:2"]  # nothing published twice
    assert dispatched == [f"{JOB}:base:1", f"{JOB}:segment:1"]
    await jobs.close()  # removes what is still waiting
    assert not stored(kv).outbox_events and not stored(kv).outbox_requests


async def test_without_a_next_write_the_published_outbox_goes_by_a_write_of_its_own():
    jobs, kv, _bus, _dispatched = await store_with_job(clear_delay=0.05)
    record, _ = await jobs.transition(TENANT, JOB, step("base"))
    await jobs.flush(record)
    assert stored(kv).outbox_requests
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not stored(kv).outbox_requests:
            break
    assert not stored(kv).outbox_events and not stored(kv).outbox_requests
    assert stored(kv).job.last_sequence == 1


async def test_a_terminal_record_is_cleared_at_once_with_what_waited_before_it():
    jobs, kv, bus, _dispatched = await store_with_job(clear_delay=30.0)
    record, _ = await jobs.transition(TENANT, JOB, step("base"))
    await jobs.flush(record)
    # The next transition changes nothing: nothing is written, the published entries still wait.
    unchanged, _ = await jobs.transition(TENANT, JOB, lambda record, now: job_state.Outcome())
    assert stored(kv).outbox_requests and not unchanged.outbox_requests
    record, _ = await jobs.transition(TENANT, JOB, step("", finish=True))
    await jobs.flush(record)
    assert bus.published == [f"{JOB}:job:1", f"{JOB}:job:2"]
    assert not stored(kv).outbox_events and not stored(kv).outbox_requests


async def test_with_no_delay_every_flush_clears_its_outbox_itself():
    jobs, kv, _bus, _dispatched = await store_with_job(clear_delay=0.0)
    record, _ = await jobs.transition(TENANT, JOB, step("base"))
    await jobs.flush(record)
    assert not stored(kv).outbox_events and not stored(kv).outbox_requests


class FailingBus(RecordingBus):
    async def publish(self, subject, message, *, msg_id, **_):
        raise ConnectionError("nats is down")


async def test_this_replicas_watchers_get_the_events_of_a_flushed_outbox_at_once():
    jobs, kv, bus, _dispatched = await store_with_job(clear_delay=30.0)
    watcher, other_job = asyncio.Queue(), asyncio.Queue()
    jobs.published_here.add(JOB, watcher)
    jobs.published_here.add("another-job", other_job)
    record, _ = await jobs.transition(TENANT, JOB, step("base"))
    await jobs.flush(record)
    assert bus.published == [f"{JOB}:job:1"]
    assert [watcher.get_nowait().sequence] == [1] and watcher.empty() and other_job.empty()

    jobs.bus = FailingBus()  # the stream is unreachable: the event is in the stored record's outbox
    record, _ = await jobs.transition(TENANT, JOB, step("segment"))
    with pytest.raises(ConnectionError):
        await jobs.flush(record)
    assert [watcher.get_nowait().sequence] == [2]
    assert [e.sequence for e in stored(kv).outbox_events] == [2]  # published later, same sequence

    jobs.published_here.discard(JOB, watcher)
    jobs.published_here.discard("another-job", other_job)
    assert len(jobs.published_here) == 0  # nothing kept for jobs nobody watches
    jobs.bus = bus
    record, _ = await jobs.transition(TENANT, JOB, step("person-0"))
    await jobs.flush(record)
    assert watcher.empty()
    await jobs.close()


def record_writes() -> dict[str, float]:
    from multipass_gateway.infra import metrics

    return {
        outcome: metrics.JOB_RECORD_WRITES.labels(outcome=outcome)._value.get()
        for outcome in ("written", "conflict", "confirm")
    }


async def test_record_writes_are_counted_by_outcome_a_replica_that_wrote_last_reads_nothing():
    jobs, kv, _bus, _dispatched = await store_with_job(clear_delay=0.0)
    other = JobStore(RecordingBus(), kv, dispatch=jobs.dispatch, clear_delay=0.0)  # type: ignore[arg-type]
    before = record_writes()
    await jobs.transition(TENANT, JOB, step("base"))  # this replica created the record: no read
    await other.transition(TENANT, JOB, step("segment"))  # never saw it: reads, then writes
    await jobs.transition(TENANT, JOB, step("person"))  # its remembered record is stale: refused, read
    await jobs.transition(TENANT, JOB, lambda record, _now: job_state.Outcome())  # unchanged: confirmed
    after = record_writes()
    assert {k: after[k] - before[k] for k in after} == {"written": 3, "conflict": 1, "confirm": 1}
