"""Pass events (``started``, ``progress``, ``completed``, ``failed``): built and published in one place.

Whoever runs a pass (a diffusion worker, the gateway's own passes) reports on
``multipass.events.<job_id>.<event>`` with ``Nats-Msg-Id`` ``<job_id>:<image>:<pass>:<attempt>:<suffix>``
(``suffix`` defaults to the event name; progress adds ``:<step>``), so a repeated report is dropped.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message

from multipass import names
from multipass.v1 import diffusion_pb2, events_pb2


class EventPublisher(Protocol):
    async def publish(self, subject: str, message: Message, *, msg_id: str) -> object: ...


def pass_event(request: diffusion_pb2.PassRequest, **payload: Message) -> events_pb2.PassEvent:
    """The event of ``request``'s attempt, stamped now; ``payload`` is one of ``started=``, ``progress=``,
    ``completed=`` or ``failed=``."""
    event = events_pb2.PassEvent(
        job_id=request.job_id,
        tenant=request.tenant,
        image_index=request.image_index,
        pass_name=request.pass_name,
        attempt=request.attempt,
        **payload,
    )
    event.time.GetCurrentTime()
    return event


async def publish_pass_event(
    bus: EventPublisher,
    request: diffusion_pb2.PassRequest,
    event: str,
    *,
    suffix: str | None = None,
    **payload: Message,
) -> tuple[events_pb2.PassEvent, str]:
    """Publish ``event`` (a name of :data:`multipass.names.PASS_EVENTS`) of ``request``'s attempt; the event
    as published and its ``Nats-Msg-Id``."""
    msg_id = names.pass_msg_id(
        request.job_id, request.image_index, request.pass_name, request.attempt, suffix or event
    )
    message = pass_event(request, **payload)
    await bus.publish(names.event_subject(request.job_id, event), message, msg_id=msg_id)
    return message, msg_id
