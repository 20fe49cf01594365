"""WatchJob's event stream: a job's events in sequence order, history first, then live, to the end.

Events are read back from stream ``MULTIPASS_JOB_EVENTS`` (subject ``multipass.jobevents.<job_id>``). The
per-job sequence numbers are gap-free, but two replicas may publish neighbouring events in the other
order, so events are held until their predecessors arrived. A gap that lasts means an outbox was not
published yet (its replica died): the watcher publishes the record's outbox itself, and after a bound
gives up on the missing event rather than stall the stream.

A caller's ``revoked`` event (set when the API key that opened the stream is revoked, see
:mod:`multipass_gateway.infra.key_streams`) ends the stream with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import Bus
from multipass.errors import InvalidInput, Reason, Unauthenticated, Violation
from multipass.v1 import jobs_pb2
from multipass_gateway.domain import job_state
from multipass_gateway.infra.job_store import JobStore

log = logging.getLogger(__name__)

#: Seconds without news after which the job record is consulted.
IDLE_CHECK_SECONDS = 5.0
#: Seconds a gap may last before the watcher publishes the outbox itself, and before it skips the gap.
GAP_FLUSH_SECONDS = 1.0
GAP_GIVE_UP_SECONDS = 10.0


def _check_key(revoked: asyncio.Event | None) -> None:
    if revoked is not None and revoked.is_set():
        raise Unauthenticated("the API key of this stream was revoked", reason=Reason.API_KEY_INVALID)


async def _signal(revoked: asyncio.Event, queue: asyncio.Queue) -> None:
    await revoked.wait()
    queue.put_nowait(None)


async def watch(
    bus: Bus,
    jobs: JobStore,
    tenant: str,
    job_id: str,
    after_sequence: int,
    *,
    revoked: asyncio.Event | None = None,
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """The job's events with sequence > ``after_sequence``, ending with its ``finished`` event.

    Unauthenticated as soon as ``revoked`` is set.
    """
    if after_sequence < 0:
        raise InvalidInput.of([Violation("after_sequence", f"got {after_sequence}; expected >= 0")])
    record = await jobs.get(tenant, job_id)
    if job_state.is_terminal(record) and after_sequence >= record.job.last_sequence:
        return
    _check_key(revoked)
    #: Events, and None when the key was revoked.
    queue: asyncio.Queue[jobs_pb2.JobEvent | None] = asyncio.Queue()
    replay = bus.replay(names.STREAM_JOB_EVENTS, names.job_event_subject(job_id), deliver_new=True)

    async def pump() -> None:
        async for _seq, data, _headers in replay:
            event = jobs_pb2.JobEvent()
            try:
                event.ParseFromString(data)
            except DecodeError:
                log.warning("undecodable job event skipped", extra={"job_id": job_id})
                continue
            await queue.put(event)

    # Events this replica publishes come at once too; the stream's copies of them are then duplicates.
    jobs.published_here.add(job_id, queue)
    reader = asyncio.create_task(pump())
    guard = asyncio.create_task(_signal(revoked, queue)) if revoked is not None else None
    expected = after_sequence + 1
    held: dict[int, jobs_pb2.JobEvent] = {}
    gap_since: float | None = None
    flushed_for_gap = False
    try:
        while True:
            _check_key(revoked)
            if reader.done() and queue.empty():
                reader.result()  # re-raise what ended the reader
                return
            try:
                event = await asyncio.wait_for(queue.get(), GAP_FLUSH_SECONDS if held else IDLE_CHECK_SECONDS)
            except TimeoutError:
                record = await jobs.load(tenant, job_id)
                if record is None:
                    return
                if held:
                    gap_since = gap_since or time.monotonic()
                    if not flushed_for_gap and record.outbox_events:
                        await jobs.flush(record)
                        flushed_for_gap = True
                    elif time.monotonic() - gap_since > GAP_GIVE_UP_SECONDS:
                        log.warning(
                            "job event sequence gap skipped", extra={"job_id": job_id, "missing": expected}
                        )
                        expected = min(held)
                elif record.outbox_events:
                    await jobs.flush(record)
                elif job_state.is_terminal(record):
                    # Everything was published and the replay had time to deliver it; events older
                    # than the stream's retention (7 days) are gone, so do not wait for them.
                    if record.job.last_sequence >= expected:
                        log.warning(
                            "job events no longer retained", extra={"job_id": job_id, "from": expected}
                        )
                    return
            else:
                _check_key(revoked)
                if event.sequence >= expected:
                    held[event.sequence] = event
            while expected in held:
                _check_key(revoked)
                current = held.pop(expected)
                expected += 1
                gap_since, flushed_for_gap = None, False
                yield current
                if current.WhichOneof("event") == "finished":
                    return
    finally:
        jobs.published_here.discard(job_id, queue)
        for task in (reader, guard):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await replay.aclose()
