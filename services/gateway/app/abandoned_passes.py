"""Passes whose every delivery died with its worker: JetStream's max-deliveries advisory ends them cleanly.

:class:`AbandonedPasses` hears the advisories of the pass work queue, fails the abandoned attempt as
UNAVAILABLE through the orchestrator (so it runs again while attempts remain) and deletes the request
from the work queue. Why it is needed and its limits: docs/CONTRACTS.md ("The gateway's consumers").
"""

from __future__ import annotations

import json
import logging

from google.protobuf.message import DecodeError

from multipass import names
from multipass.bus import Bus, CoreMessage, CoreSubscription, pass_event
from multipass.errors import MultipassError, NotFound
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2
from multipass_gateway.app.orchestrator import Orchestrator

log = logging.getLogger(__name__)


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
        self._subscription: CoreSubscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe_core(
            names.PASS_MAX_DELIVERIES_ADVISORY, self.on_advisory
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def on_advisory(self, msg: CoreMessage) -> None:
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
        stored = await self.bus.get_message(names.STREAM_PASSES, sequence)
        if stored is None:
            return False  # withdrawn (cancel) or already handled by another replica
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
            try:
                await self.orchestrator.apply(abandoned_event(request, deliveries, consumer))
            except NotFound:
                pass
            except MultipassError as error:
                # NATS itself is failing: leave the request, a replica hearing the advisory may manage.
                log.warning("could not fail an abandoned pass", extra={"error": str(error)})
                return False
        try:
            if not await self.bus.delete_message(names.STREAM_PASSES, sequence):
                log.debug("abandoned request already gone", extra={"sequence": sequence})
        except MultipassError as error:
            log.debug("abandoned request not deleted", extra={"error": repr(error)})
        return True
