"""Durable pull consumers: creating them, and reading their counters (queue lag, messages in flight)."""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import api

from multipass.bus.base import BusBase
from multipass.bus.errors import nats_errors
from multipass.errors import NotFound


@dataclass(frozen=True)
class ConsumerState:
    """What a durable consumer holds (names as in JetStream's ConsumerInfo)."""

    stream: str
    durable: str
    #: Messages not yet delivered: the queue lag scaling decisions use.
    num_pending: int
    #: Delivered, not yet acked (in flight).
    num_ack_pending: int
    num_redelivered: int
    #: Pull requests waiting (idle workers).
    num_waiting: int
    delivered_stream_seq: int
    ack_floor_stream_seq: int

    @property
    def lag(self) -> int:
        """Messages not finished yet: pending plus in flight."""
        return self.num_pending + self.num_ack_pending

    @classmethod
    def of(cls, info: api.ConsumerInfo, stream: str, durable: str) -> ConsumerState:
        return cls(
            stream=stream,
            durable=durable,
            num_pending=info.num_pending or 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_redelivered=info.num_redelivered or 0,
            num_waiting=info.num_waiting or 0,
            delivered_stream_seq=info.delivered.stream_seq if info.delivered else 0,
            ack_floor_stream_seq=info.ack_floor.stream_seq if info.ack_floor else 0,
        )


class ConsumerAdmin(BusBase):
    async def ensure_consumer(
        self,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        ack_wait: float,
        max_deliver: int,
        max_ack_pending: int,
    ) -> ConsumerState:
        """Create the durable pull consumer, or update it to this configuration."""
        config = api.ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
        )
        with nats_errors(f"create consumer {durable}"):
            return ConsumerState.of(await self.js.add_consumer(stream, config), stream, durable)

    async def consumer_info(self, stream: str, durable: str) -> ConsumerState:
        """The consumer's counters; NotFound when it does not exist (yet)."""
        with nats_errors(f"read consumer {durable}"):
            try:
                info = await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError as error:
                raise NotFound(f"consumer {durable} on stream {stream} does not exist") from error
        return ConsumerState.of(info, stream, durable)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        """The counters of every consumer of ``stream`` (``durable`` is empty for a nameless one)."""
        with nats_errors(f"read the consumers of {stream}"):
            infos = await self.js.consumers_info(stream)
        return [
            ConsumerState.of(
                info, stream, info.name or (info.config.durable_name if info.config else "") or ""
            )
            for info in infos
        ]
