"""The orchestrator: consumes every pass event and advances the job's chains.

Each event is one compare-and-set of its transition on the job record, an outbox flush and an ack (events
of one job that arrive together share one write); an event that ends a pass attempt then frees its
in-flight slot in the pass scheduler. Delivery, redelivery and why acks are not confirmed:
docs/CONTRACTS.md ("The gateway's consumers").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from multipass import names
from multipass.bus import Ack, Bus, Delivery, Term
from multipass.errors import NotFound
from multipass.logs import log_context
from multipass.v1 import events_pb2
from multipass_gateway.app.job_end import JobEnd
from multipass_gateway.app.progress_gate import ProgressGate
from multipass_gateway.domain import job_state
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.object_copies import ObjectCopies
from multipass_gateway.infra.pass_scheduler import PassScheduler

log = logging.getLogger(__name__)

#: An event whose replica died (or whose ack was lost) comes back this long after; handlers that run longer
#: are kept by the bus's heartbeats.
ACK_WAIT_SECONDS = 15.0
MAX_DELIVER = 20
#: Events applied by :meth:`Orchestrator.apply_published` remembered until their delivery (a bound for
#: deliveries that go to another replica).
APPLIED_HERE_REMEMBERED = 4096


def ends_attempt(event: events_pb2.PassEvent) -> bool:
    """Whether the event closes its pass attempt (a retriable failure means the worker tries again)."""
    kind = event.WhichOneof("event")
    return kind == "completed" or (kind == "failed" and not event.failed.retriable)


class Orchestrator:
    def __init__(
        self,
        bus: Bus,
        jobs: JobStore,
        job_end: JobEnd,
        scheduler: PassScheduler,
        *,
        max_attempts: int,
        concurrency: int,
        copies: ObjectCopies | None = None,
        progress_gate: ProgressGate | None = None,
    ):
        self.bus = bus
        #: Step reports that come too soon after the last one recorded are acknowledged unapplied.
        self.progress_gate = progress_gate or ProgressGate(0)
        #: Where copies of small outputs that completed events carry are kept, for the passes reading them.
        self.copies = copies
        self.jobs = jobs
        self.job_end = job_end
        self.scheduler = scheduler
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        #: (tenant, job_id) -> events waiting for that job's current applier, with their futures.
        self._pending: dict[tuple[str, str], list[tuple[events_pb2.PassEvent, asyncio.Future]]] = {}
        #: Msg ids of events this replica published and applies itself -> whether that application
        #: succeeded (a future while it runs), until the stream's delivery of the event comes here.
        self._applied_here: OrderedDict[str, asyncio.Future] = OrderedDict()

    async def apply_published(self, event: events_pb2.PassEvent, msg_id: str) -> None:
        """Apply an event this replica has just published (stored in the stream) without waiting for the
        stream to deliver it; that delivery, when it comes here, waits for this application and is then
        acknowledged without a second one. An event that cannot be applied now is left to the delivery."""
        applied: asyncio.Future = asyncio.get_running_loop().create_future()
        self._applied_here[msg_id] = applied
        while len(self._applied_here) > APPLIED_HERE_REMEMBERED:
            self._applied_here.popitem(last=False)
        try:
            await self.apply(event)
            applied.set_result(True)
        except Exception as error:  # noqa: BLE001 - the stream's delivery applies it
            log.debug("published event left to its delivery", extra={"error": str(error)})
        finally:
            if not applied.done():
                applied.set_result(False)
                self._applied_here.pop(msg_id, None)

    async def handle(self, delivery: Delivery):
        applied_here = self._applied_here.pop(delivery.msg_id, None) if delivery.msg_id else None
        if applied_here is not None and await asyncio.shield(applied_here):
            return Ack()  # applied by this replica when it published it
        event = delivery.parse(events_pb2.PassEvent)
        if not event.job_id or not event.tenant or not event.pass_name:
            return Term(f"pass event on {delivery.subject} lacks job_id, tenant or pass_name")
        if not self.progress_gate.admit(event):
            return Ack()  # a step report soon after the last one recorded: the next one will do
        try:
            await self.apply(event)
        except NotFound:
            return Term(f"job {event.job_id} of tenant {event.tenant} does not exist")
        return Ack()

    async def apply(self, event: events_pb2.PassEvent) -> job_state.Outcome:
        """Apply one pass event to its job (idempotent); NotFound when the job does not exist.

        Events of one job that arrive while another of its events is being applied wait and are then
        applied together: one compare-and-set of the record and one flush of the outbox for all of
        them (a worker's ``started`` and ``completed`` often arrive together). Each event's outcome is
        what applying it alone, in arrival order, would give.
        """
        job = (event.tenant, event.job_id)
        waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        queued = self._pending.get(job)
        if queued is not None:
            queued.append((event, waiter))  # the job's current applier takes it in its next batch
            return await waiter
        self._pending[job] = [(event, waiter)]
        try:
            while batch := self._pending[job]:
                self._pending[job] = []
                try:
                    outcomes = await self._apply_batch([e for e, _ in batch])
                except BaseException as error:
                    for _event, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    continue
                for (_event, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            for _event, future in self._pending.pop(job, []):
                if not future.done():
                    future.cancel()
        return await waiter

    async def _apply_batch(self, events: list[events_pb2.PassEvent]) -> list[job_state.Outcome]:
        first = events[0]
        with log_context(job_id=first.job_id, **{"pass": first.pass_name, "image": first.image_index}):
            try:
                record, outcomes = await self.jobs.transition_many(
                    first.tenant,
                    first.job_id,
                    [
                        lambda record, now, event=event: job_state.apply_event(
                            record, event, now, max_attempts=self.max_attempts
                        )
                        for event in events
                    ],
                )
            except NotFound:
                log.warning("pass event for an unknown job; dropped")
                raise
            for event, outcome in zip(events, outcomes, strict=True):
                if outcome.note:
                    log.debug(
                        "pass event changed nothing",
                        extra={"note": outcome.note, "event": event.WhichOneof("event")},
                    )
            self._keep_output_copies(events)
            await self.jobs.flush(record)
            if any(outcome.finished for outcome in outcomes):
                await self.job_end.finished(record)
            for event in events:
                if ends_attempt(event):
                    await self.scheduler.done(PassKey.of_request(event.tenant, event))
        return outcomes

    def _keep_output_copies(self, events: list[events_pb2.PassEvent]) -> None:
        if self.copies is None:
            return
        self.copies.remember(
            event.completed.output_copy
            for event in events
            if event.WhichOneof("event") == "completed" and event.completed.HasField("output_copy")
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.consume(
            stream=names.STREAM_EVENTS,
            durable=names.ORCHESTRATOR_DURABLE,
            filter_subject=names.EVENTS_SUBJECTS,
            handler=self.handle,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            max_ack_pending=max(64, self.concurrency * 8),
            stop=stop,
            batch=self.concurrency,
            concurrency=self.concurrency,
            backoff=(0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
            # Applying an event twice is harmless (transitions are idempotent on image, pass and
            # attempt; the scheduler's markers are per attempt), so an ack lost on the way only costs a
            # redelivery after ack_wait: acks go out without waiting for the server's confirmation.
            confirm_acks=False,
        )
