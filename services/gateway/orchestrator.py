"""The orchestrator: consumes every pass event and advances the job's chains.

One durable consumer (``gateway-orchestrator`` on ``multipass.events.>``) is shared by every gateway
replica, so each event is handled once while it is acked; a replica that dies mid-event leaves it to be
redelivered. Handling an event = compare-and-set the pure transition on the job record, publish the
outbox (job events, next pass requests), ack. A redelivered or late event finds its transition already
applied (idempotent on image, pass and attempt) and at most publishes an outbox left behind.

An event that ends a pass attempt (completed, or failed without the worker retrying) frees the
attempt's in-flight slot in the :class:`~multipass_gateway.scheduler.PassScheduler`, after the
transition was written, so the next ready pass of any tenant may go.
"""

from __future__ import annotations

import asyncio
import logging

from multipass import subjects
from multipass.bus import Ack, Bus, Delivery, Term
from multipass.errors import NotFound
from multipass.logs import log_context
from multipass.v1 import events_pb2
from multipass_gateway import job_state, names
from multipass_gateway.job_store import JobStore
from multipass_gateway.lifecycle import JobLifecycle
from multipass_gateway.scheduler import PassKey, PassScheduler

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 30.0
MAX_DELIVER = 20


def ends_attempt(event: events_pb2.PassEvent) -> bool:
    """Whether the event closes its pass attempt (a retriable failure means the worker tries again)."""
    kind = event.WhichOneof("event")
    return kind == "completed" or (kind == "failed" and not event.failed.retriable)


class Orchestrator:
    def __init__(
        self,
        bus: Bus,
        jobs: JobStore,
        lifecycle: JobLifecycle,
        *,
        max_attempts: int,
        concurrency: int,
        scheduler: PassScheduler | None = None,
    ):
        self.bus = bus
        self.jobs = jobs
        self.lifecycle = lifecycle
        self.scheduler = scheduler
        self.max_attempts = max_attempts
        self.concurrency = concurrency

    async def handle(self, delivery: Delivery):
        event = delivery.parse(events_pb2.PassEvent)
        if not event.job_id or not event.tenant or not event.pass_name:
            return Term(f"pass event on {delivery.subject} lacks job_id, tenant or pass_name")
        try:
            await self.apply(event)
        except NotFound:
            return Term(f"job {event.job_id} of tenant {event.tenant} does not exist")
        return Ack()

    async def apply(self, event: events_pb2.PassEvent) -> job_state.Outcome:
        """Apply one pass event to its job (idempotent); NotFound when the job does not exist."""
        with log_context(job_id=event.job_id, **{"pass": event.pass_name, "image": event.image_index}):
            try:
                record, outcome = await self.jobs.transition(
                    event.tenant,
                    event.job_id,
                    lambda record, now: job_state.apply_event(
                        record, event, now, max_attempts=self.max_attempts
                    ),
                )
            except NotFound:
                log.warning("pass event for an unknown job; dropped")
                raise
            if outcome.note:
                log.debug(
                    "pass event changed nothing",
                    extra={"note": outcome.note, "event": event.WhichOneof("event")},
                )
            await self.jobs.flush(record)
            if outcome.finished:
                await self.lifecycle.finished(record)
            if self.scheduler is not None and ends_attempt(event):
                await self.scheduler.done(PassKey.of_request(event.tenant, event))
        return outcome

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.consume(
            stream=subjects.STREAM_EVENTS,
            durable=names.ORCHESTRATOR_DURABLE,
            filter_subject=subjects.EVENTS_SUBJECTS,
            handler=self.handle,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            max_ack_pending=max(64, self.concurrency * 8),
            stop=stop,
            batch=self.concurrency,
            concurrency=self.concurrency,
            backoff=(0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        )
