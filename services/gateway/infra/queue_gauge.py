"""The queue gauge: work-queue consumers' pending passes (JetStream consumer info) as a Prometheus gauge."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from multipass import names
from multipass.bus import Bus
from multipass_gateway.infra import metrics

log = logging.getLogger(__name__)


class QueueGauge:
    def __init__(self, bus: Bus, interval: float):
        self.bus = bus
        self.interval = interval

    async def refresh(self) -> None:
        for consumer in await self.bus.consumers(names.STREAM_PASSES):
            metrics.QUEUE_PENDING.labels(consumer=consumer.durable or "unknown").set(consumer.lag)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - a metric must never take the gateway down
                log.debug("queue gauge refresh failed", extra={"error": repr(error)})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
