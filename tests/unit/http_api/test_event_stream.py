"""The SSE stream of a job's events: ids a reconnection can resume from, and how a failure ends it."""

import asyncio

import grpc
import pytest

from multipass.v1 import jobs_pb2
from multipass_http_api.routes.events import READ_AHEAD_EVENTS, EventPump, _event_stream
from multipass_http_api.sse import sse_event


class FailingCall:
    """A WatchJob call that yields ``events`` and then fails like a gateway that went away."""

    def __init__(self, events):
        self.events = events

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for event in self.events:
            yield event
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gateway gone"
        )

    def cancel(self):
        return True


def test_an_event_without_an_id_has_no_id_line():
    assert sse_event(None, "error", {"status": 503}) == b'event: error\ndata: {"status":503}\n\n'
    assert sse_event(7, "accepted", {}) == b"id: 7\nevent: accepted\ndata: {}\n\n"


@pytest.mark.asyncio
async def test_a_failed_stream_ends_with_an_error_event_that_keeps_the_last_event_id():
    accepted = jobs_pb2.JobEvent(job_id="j1", sequence=1)
    accepted.accepted.num_images = 1
    chunks = [
        chunk
        async for chunk in _event_stream(
            EventPump(FailingCall([accepted])), "http://h", heartbeat_seconds=5.0, stopping=asyncio.Event()
        )
    ]
    events = [chunk.decode() for chunk in chunks if b"event:" in chunk]
    assert events[0].startswith("id: 1\nevent: accepted\n")
    assert events[-1].startswith("event: error\ndata: ")  # no id: a reconnection resumes after 1
    assert '"status":503' in events[-1]


@pytest.mark.asyncio
async def test_a_refusal_before_any_event_is_seen_at_once_and_a_later_failure_is_not():
    refused = EventPump(FailingCall([]))
    error = await refused.refused_at_once(1.0)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    await refused.close()
    accepted = jobs_pb2.JobEvent(job_id="j1", sequence=1)
    streaming = EventPump(FailingCall([accepted]))
    assert await streaming.refused_at_once(1.0) is None  # an event came first: the stream reports the rest
    await streaming.close()


class EndlessCall:
    """A WatchJob call with events for as long as they are read (a long job's replay); counts them."""

    def __init__(self):
        self.read = 0

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while True:
            await asyncio.sleep(0)  # as a network read would, lets the loop run
            self.read += 1
            event = jobs_pb2.JobEvent(job_id="j1", sequence=self.read)
            event.step_progress.step = 1
            yield event

    def cancel(self):
        return True


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_stops_the_pump_after_a_bounded_read_ahead():
    call = EndlessCall()
    pump = EventPump(call)
    await asyncio.sleep(0.2)  # the client takes nothing meanwhile
    assert call.read <= READ_AHEAD_EVENTS + 1
    await pump.queue.get()
    await asyncio.sleep(0.05)
    assert call.read <= READ_AHEAD_EVENTS + 2  # one taken, about one more read
    await pump.close()
