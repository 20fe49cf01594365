"""Passes whose every delivery died with its worker: JetStream's max-deliveries advisory ends them cleanly.

JetStream publishes an advisory when a pass request's last allowed delivery goes unanswered; the stream
``MULTIPASS_ADVISORIES`` keeps each one until a gateway has handled it (one durable consumer shared by
every replica), so an advisory sent while no gateway is connected is handled when one is. Handling it
fails the abandoned attempt as UNAVAILABLE through the orchestrator (so it runs again while attempts
remain) and deletes the request from the work queue. Why it is needed and its limits: docs/CONTRACTS.md
("The gateway's consumers").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import Ack, Bus, Decision, Delivery, Term, pass_event
from multipass.errors import MultipassError, NotFound
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_gateway.app.orchestrator import Orchestrator

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 15.0
#: Deliveries of one advisory while NATS or KV fail (nak backoff up to 30 s: several minutes in all).
MAX_DELIVER = 20
CONCURRENCY = 8


def abandoned_event(
    request: diffusion_pb2.PassRequest, deliveries: int, consumer: str
) -> events_pb2.PassEvent:
    message = (
        f"gave up after {deliveries} deliveries to {consumer}: no worker finished the pass "
        "(each one died or stopped answering while running it)"
    )
    return pass_event(
        request,
        failed=events_pb2.PassFailed(
            error=common_pb2.ErrorDetail(
                code=common_pb2.ERROR_CODE_UNAVAILABLE, message=message, pass_name=request.pass_name
            ),
            retriable=False,
        ),
    )


class AbandonedPasses:
    def __init__(self, bus: Bus, orchestrator: Orchestrator):
        self.bus = bus
        self.orchestrator = orchestrator

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.consume(
            stream=names.STREAM_ADVISORIES,
            durable=names.ABANDONED_PASSES_DURABLE,
            filter_subject=names.PASS_MAX_DELIVERIES_ADVISORY,
            handler=self.handle,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            max_ack_pending=CONCURRENCY * 4,
            stop=stop,
            batch=CONCURRENCY,
            concurrency=CONCURRENCY,
            backoff=(1.0, 2.0, 5.0, 10.0, 30.0),
        )

    async def handle(self, delivery: Delivery) -> Decision:
        """One stored advisory: Ack once its pass is dealt with; NATS or KV failures raise (nak, retry)."""
        try:
            advisory = json.loads(delivery.data)
            sequence = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or 0)
            consumer = str(advisory.get("consumer") or delivery.subject.rsplit(".", 1)[-1])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("unreadable max-deliveries advisory", extra={"error": repr(error)})
            return Term(f"unreadable max-deliveries advisory: {error!r}")
        await self.give_up(sequence, deliveries, consumer)
        return Ack()

    async def give_up(self, sequence: int, deliveries: int, consumer: str) -> bool:
        """Fail the attempt whose request sits at ``sequence``; False when there is nothing to do.

        A failure to read the request or to apply the failure raises (the advisory is delivered again);
        applying it twice changes nothing.
        """
        stored = await self.bus.get_message(names.STREAM_PASSES, sequence)
        if stored is None:
            return False  # withdrawn (cancel), or handled before
        request = diffusion_pb2.PassRequest()
        try:
            request.ParseFromString(stored.data)
        except DecodeError:
            request = diffusion_pb2.PassRequest()
        if request.job_id and request.tenant and request.pass_name:
            log.error(
                "pass abandoned after its last delivery; failing the attempt",
                extra={
                    "job_id": request.job_id,
                    "pass": request.pass_name,
                    "attempt": request.attempt,
                    "deliveries": deliveries,
                    "consumer": consumer,
                },
            )
            with contextlib.suppress(NotFound):  # the job is gone: only the request is left to remove
                await self.orchestrator.apply(abandoned_event(request, deliveries, consumer))
        try:
            if not await self.bus.delete_message(names.STREAM_PASSES, sequence):
                log.debug("abandoned request already gone", extra={"sequence": sequence})
        except MultipassError as error:
            log.debug("abandoned request not deleted", extra={"error": repr(error)})
        return True
