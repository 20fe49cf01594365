"""Publishing to JetStream: every message carries a ``Nats-Msg-Id``, so sending it twice is harmless."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from multipass.bus.base import BusBase
from multipass.bus.errors import nats_errors
from multipass.errors import InvalidInput, Unavailable, Violation

log = logging.getLogger(__package__)

MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass(frozen=True)
class PublishAck:
    """The stream's receipt of a publish."""

    stream: str
    #: The message's stream sequence (the first one's, for a duplicate).
    seq: int
    #: True when the stream already held a message with this msg id (nothing was stored).
    duplicate: bool


class Publishing(BusBase):
    async def publish(
        self,
        subject: str,
        message: Message | bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        attempts: int = 2,
    ) -> PublishAck:
        """Publish to JetStream with ``Nats-Msg-Id`` = ``msg_id``; returns the stream's receipt.

        A publish whose acknowledgement does not come back within ``timeout`` (say, sent just as the
        server restarted) is sent again, up to ``attempts`` times in all: the msg id makes that safe.
        Then it raises Unavailable.
        """
        if not msg_id:
            raise InvalidInput.of([Violation("msg_id", "is required: every publish is deduplicated by it")])
        data = message.SerializeToString() if isinstance(message, Message) else bytes(message)
        for attempt in range(1, max(attempts, 1) + 1):
            try:
                with nats_errors(f"publish to {subject}"):
                    ack = await self.js.publish(
                        subject, data, timeout=timeout, headers={**(headers or {}), MSG_ID_HEADER: msg_id}
                    )
                return PublishAck(stream=ack.stream, seq=int(ack.seq or 0), duplicate=bool(ack.duplicate))
            except Unavailable:
                if attempt >= attempts or self.nc.is_closed:
                    raise
                log.info(
                    "publish not acknowledged; sending again", extra={"subject": subject, "attempt": attempt}
                )
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")
