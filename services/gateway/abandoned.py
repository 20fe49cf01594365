"""Passes whose every delivery died with its worker: JetStream's max-deliveries advisory ends them cleanly.

A worker that dies mid-pass (SIGKILL, out of memory, a lost node) or hangs never acks; JetStream
redelivers the request after the consumer's ack wait, up to ``max_deliver`` deliveries, and then stops,
publishing only an advisory on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``. No
worker is left to report a failure, so without this the job would wait forever on a pass nobody runs
(a request that crashes every worker that takes it, a "poison pill", ends the same way).

:class:`AbandonedPasses` listens for these advisories on the pass work queue, reads the abandoned request
and fails that attempt through the orchestrator with ``UNAVAILABLE`` ("gave up after N deliveries"): a
retriable code, so the pass runs again as attempt + 1 while ``MULTIPASS_GATEWAY_PASS_MAX_ATTEMPTS``
allows, after which the job fails naming the pass. The abandoned request is then deleted from the work
queue. Every replica hears the advisory; applying the failure is idempotent on (image, pass, attempt).
An advisory sent while no gateway is connected is lost (core NATS): that pass stays in flight.
"""

from __future__ import annotations

import json
import logging

import nats.js.errors
from google.protobuf.message import DecodeError

from multipass import subjects
from multipass.bus import Bus, CoreSubscription, nats_errors
from multipass.errors import MultipassError, NotFound
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_gateway.orchestrator import Orchestrator

log = logging.getLogger(__name__)

ADVISORY_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM_PASSES}.*"


def abandoned_event(
    request: diffusion_pb2.PassRequest, deliveries: int, consumer: str
) -> events_pb2.PassEvent:
    message = (
        f"gave up after {deliveries} deliveries to {consumer}: no worker finished the pass "
        "(each one died or stopped answering while running it)"
    )
    event = events_pb2.PassEvent(
        job_id=request.job_id,
        tenant=request.tenant,
        image_index=request.image_index,
        pass_name=request.pass_name,
        attempt=request.attempt,
        failed=events_pb2.PassFailed(
            error=common_pb2.ErrorDetail(
                code=common_pb2.ERROR_CODE_UNAVAILABLE, message=message, pass_name=request.pass_name
            ),
            retriable=False,
        ),
    )
    event.time.GetCurrentTime()
    return event


class AbandonedPasses:
    def __init__(self, bus: Bus, orchestrator: Orchestrator):
        self.bus = bus
        self.orchestrator = orchestrator
        self._subscription: CoreSubscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe_core(ADVISORY_SUBJECT, self.on_advisory)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def on_advisory(self, msg) -> None:
        try:
            advisory = json.loads(msg.data)
            sequence = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or 0)
            consumer = str(advisory.get("consumer") or msg.subject.rsplit(".", 1)[-1])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("unreadable max-deliveries advisory", extra={"error": repr(error)})
            return
        await self.give_up(sequence, deliveries, consumer)

    async def give_up(self, sequence: int, deliveries: int, consumer: str) -> bool:
        """Fail the attempt whose request sits at ``sequence``; False when there is nothing to do."""
        try:
            with nats_errors("read an abandoned pass request"):
                raw = await self.bus.js.get_msg(subjects.STREAM_PASSES, sequence)
        except nats.js.errors.NotFoundError:
            return False  # withdrawn (cancel) or already handled by another replica
        request = diffusion_pb2.PassRequest()
        try:
            request.ParseFromString(raw.data or b"")
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
            try:
                await self.orchestrator.apply(abandoned_event(request, deliveries, consumer))
            except NotFound:
                pass
            except MultipassError as error:
                # NATS itself is failing: leave the request, a replica hearing the advisory may manage.
                log.warning("could not fail an abandoned pass", extra={"error": str(error)})
                return False
        try:
            with nats_errors("delete an abandoned pass request"):
                await self.bus.js.delete_msg(subjects.STREAM_PASSES, sequence)
        except (nats.js.errors.NotFoundError, MultipassError) as error:
            log.debug("abandoned request already gone", extra={"error": repr(error)})
        return True
