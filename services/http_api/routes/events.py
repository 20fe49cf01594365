"""A job's events as Server-Sent Events, read from the gateway's WatchJob stream.

Each event is ``id: <sequence>``, ``event: <kind>`` (accepted, pass_started, step_progress,
pass_completed, pass_failed, finished) and ``data: <the JobEvent as JSON>``; completed passes carry the
URLs of their image and masks. A client resumes with ``Last-Event-ID`` (what browsers send when they
reconnect) or ``?from_seq=N``: it gets the events after that sequence. Comments keep an idle stream
open; the stream ends after the job's ``finished`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from multipass.v1 import jobs_pb2
from multipass_http_api.deps import Authorization, BaseUrl, Gateway, Settings
from multipass_http_api.errors import HttpError, http_error_for_rpc
from multipass_http_api.job_views import file_path, message_dict
from multipass_http_api.metrics import HTTP_STREAMS_OPEN
from multipass_http_api.sse import sse_comment, sse_event, sse_retry

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: Milliseconds a browser waits before reconnecting a dropped stream.
RECONNECT_MS = 2000
#: Largest sequence number accepted to resume from.
MAX_SEQUENCE = 2**62


def _resume_after(last_event_id: str | None, from_seq: int | None) -> int:
    """The sequence to resume after: ``Last-Event-ID`` wins (a browser's reconnect), then ``from_seq``."""
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit() or int(text) > MAX_SEQUENCE:
            raise HttpError(
                422,
                "invalid Last-Event-ID",
                {
                    "Last-Event-ID": [
                        f"got {text[:40]!r}; expected an event id (an integer in 0..{MAX_SEQUENCE})"
                    ]
                },
            )
        return int(text)
    return from_seq or 0


def event_data(event: jobs_pb2.JobEvent, base_url: str) -> tuple[str, dict[str, Any]]:
    """The event's kind and its JSON, with image URLs on completed passes."""
    kind = event.WhichOneof("event") or "unknown"
    data = message_dict(event)
    if kind == "pass_completed":
        done = event.pass_completed
        files = []
        if done.output.key:
            files.append(
                {
                    "name": done.pass_name,
                    "kind": "pass",
                    "url": base_url + file_path(event.job_id, done.image_index, done.pass_name),
                }
            )
        for name in sorted(done.masks):
            files.append(
                {
                    "name": f"mask-{name}",
                    "kind": "mask",
                    "mask": name,
                    "url": base_url + file_path(event.job_id, done.image_index, f"mask-{name}"),
                }
            )
        data["files"] = files
    return kind, data


#: How long a new event stream waits for the gateway's first answer before it starts: a refusal that comes
#: at once (too many streams open, RESOURCE_EXHAUSTED) is then an HTTP error, not an ``error`` event.
FIRST_ANSWER_WAIT_SECONDS = 0.5


#: Events read ahead of a client that has not taken them yet: past them the pump stops reading WatchJob,
#: so a client that does not read holds the gateway's stream (HTTP/2 flow control) instead of this
#: service's memory.
READ_AHEAD_EVENTS = 32


class EventPump:
    """Reads the WatchJob call into a bounded queue from the moment the route starts it."""

    def __init__(self, call, read_ahead: int = READ_AHEAD_EVENTS):
        self.call = call
        self.queue: asyncio.Queue[jobs_pb2.JobEvent | BaseException | None] = asyncio.Queue(read_ahead)
        self._first = asyncio.Event()
        self.first_error: grpc.RpcError | None = None
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for event in self.call:
                self._first.set()
                await self.queue.put(event)
            await self.queue.put(None)
        except asyncio.CancelledError as error:
            # The stream is closing (its reader may be gone): tell a reader that waits, never wait for one.
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(error)
        except BaseException as error:  # noqa: BLE001 - handed to the stream, which reports it
            if not self._first.is_set() and isinstance(error, grpc.RpcError):
                self.first_error = error
            await self.queue.put(error)
        finally:
            self._first.set()

    async def refused_at_once(self, seconds: float) -> grpc.RpcError | None:
        """The call's error when the gateway refused it before any event, within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), seconds)
        return self.first_error

    async def close(self) -> None:
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


async def _event_stream(
    pump: EventPump, base_url: str, heartbeat_seconds: float, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    queue = pump.queue
    stop_task = asyncio.create_task(stopping.wait())
    try:
        yield sse_retry(RECONNECT_MS)
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, stop_task}, timeout=heartbeat_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if stop_task in done:
                    return
                yield sse_comment("heartbeat")
                continue
            item = getter.result()
            if item is None:
                return
            if isinstance(item, grpc.RpcError):
                error = http_error_for_rpc(item)
                yield sse_event(None, "error", {"status": error.status, **error.body()})
                return
            if isinstance(item, BaseException):
                if isinstance(item, asyncio.CancelledError):
                    return
                log.error("event stream failed", exc_info=item)
                yield sse_event(None, "error", {"status": 500, "error": "internal error"})
                return
            kind, data = event_data(item, base_url)
            yield sse_event(item.sequence, kind, data)
            if kind == "finished":
                return
    finally:
        stop_task.cancel()
        await pump.close()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The job's events as Server-Sent Events."}
    },
)
async def job_events(
    job_id: str,
    request: Request,
    authorization: Authorization,
    gateway: Gateway,
    settings: Settings,
    base_url: BaseUrl,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=True)] = None,
    from_seq: Annotated[
        int | None, Query(ge=0, le=MAX_SEQUENCE, description="Resume after this sequence.")
    ] = None,
):
    """The job's events from WatchJob as Server-Sent Events, ending after the terminal event."""
    after = _resume_after(last_event_id, from_seq)
    # Ask first, so a job that is not the caller's (or a bad key) is an HTTP error, not a stream.
    await gateway.get_job(authorization, job_id)
    pump = EventPump(gateway.watch_job(authorization, job_id, after))
    refused = await pump.refused_at_once(FIRST_ANSWER_WAIT_SECONDS)
    if refused is not None:
        await pump.close()
        raise http_error_for_rpc(refused)
    HTTP_STREAMS_OPEN.labels(route="/v1/jobs/{job_id}/events").inc()
    return StreamingResponse(
        _event_stream(pump, base_url, settings.sse_heartbeat_seconds, request.app.state.stopping),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
