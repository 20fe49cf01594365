"""Core NATS (no stream, at most once): broadcasts such as cancels and the gateway replicas' notes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import nats.errors
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from multipass.bus.base import BusBase
from multipass.bus.errors import nats_errors

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class CoreMessage:
    """One message heard on a core subscription."""

    subject: str
    data: bytes
    headers: Mapping[str, str]


CoreCallback = Callable[[CoreMessage], Awaitable[None]]


class CoreSubscription:
    """A core NATS subscription; ``unsubscribe()`` ends it (idempotent)."""

    def __init__(self, bus: BusBase, sub: Subscription):
        self._bus = bus
        self._sub = sub
        self.subject = sub.subject

    async def unsubscribe(self) -> None:
        if self._bus._forget(self):
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()


class CoreMessaging(BusBase):
    async def publish_core(
        self,
        subject: str,
        data: Message | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 2.0,
        flush: bool = True,
    ) -> None:
        """Core NATS publish (no persistence, at most once), flushed to the server unless ``flush=False``.

        Without the flush the message is only queued on the connection (sent in order with what follows):
        for notes whose loss is harmless, where waiting a round trip is not worth it.
        """
        payload = data.SerializeToString() if isinstance(data, Message) else bytes(data)
        with nats_errors(f"publish to {subject}"):
            await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)
            if flush:
                await self.nc.flush(timeout)

    async def subscribe_core(self, subject: str, callback: CoreCallback) -> CoreSubscription:
        """Core NATS subscription; ``callback`` gets each :class:`CoreMessage`.

        Exceptions from the callback are logged with their traceback and do not end the subscription.
        """

        async def guarded(msg: Msg) -> None:
            try:
                await callback(CoreMessage(msg.subject, msg.data, dict(msg.headers or {})))
            except Exception:
                log.exception("subscription callback failed", extra={"subject": msg.subject})

        with nats_errors(f"subscribe to {subject}"):
            sub = await self.nc.subscribe(subject, cb=guarded)
            await self.nc.flush(2.0)
        handle = CoreSubscription(self, sub)
        self._remember(handle)
        return handle
