"""Replaying a subject's history from a stream sequence, then tailing it (what ``WatchJob`` needs).

:class:`Replay` yields ``(stream_seq, data, headers)`` for every message on a subject after a given stream
sequence, in order, each once; with ``deliver_new`` it then waits for new ones until closed. It reads
through an ephemeral pull consumer recreated from the last sequence yielded when it vanishes or the
connection drops (docs/CONTRACTS.md, "Replay").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
import nats.js.errors
from nats.js import api

from multipass.bus.base import BusBase
from multipass.bus.pull import Puller
from multipass.errors import NotFound

log = logging.getLogger(__package__)

ReplayItem = tuple[int, bytes, dict[str, str]]


class Replay:
    """Async iterator of ``(stream_seq, data, headers)``; also an async context manager."""

    def __init__(
        self,
        bus: BusBase,
        stream: str,
        subject: str,
        *,
        start_sequence_after: int | None,
        deliver_new: bool,
        batch: int = 100,
        fetch_timeout: float = 1.0,
        inactive_threshold: float = 60.0,
    ):
        self._bus = bus
        self.stream = stream
        self.subject = subject
        self.deliver_new = deliver_new
        self.last_sequence = start_sequence_after or 0
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._inactive_threshold = inactive_threshold
        self._sub = None
        self._puller: Puller | None = None
        self._consumer: str | None = None
        self._buffer: list[ReplayItem] = []
        self._caught_up = False
        self._closed = False

    def __await__(self):
        async def itself() -> Replay:
            return self

        return itself().__await__()

    def __aiter__(self) -> Replay:
        return self

    async def __aenter__(self) -> Replay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> ReplayItem:
        while not self._buffer:
            if self._closed or (self._caught_up and not self.deliver_new):
                await self.aclose()
                raise StopAsyncIteration
            await self._fill()
        item = self._buffer.pop(0)
        self.last_sequence = item[0]
        return item

    async def _open(self) -> None:
        start = self.last_sequence + 1
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=self.subject,
            inactive_threshold=self._inactive_threshold,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._bus.js.add_consumer(self.stream, config)
        self._consumer = info.name
        self._sub = await self._bus.js.pull_subscribe_bind(consumer=info.name, stream=self.stream)
        self._puller = Puller(self._sub)
        self._bus._remember(self)
        if not self.deliver_new and not info.num_pending:
            self._caught_up = True

    async def _fill(self) -> None:
        try:
            if self._sub is None:
                await self._open()
                if self._caught_up and not self.deliver_new:
                    return
            try:
                msgs = await self._puller.fetch(self._batch, self._fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                if not self.deliver_new:
                    info = await self._sub.consumer_info()
                    self._caught_up = not info.num_pending
                return
        except nats.js.errors.NotFoundError as error:
            if self._sub is None:  # creating the consumer failed: no such stream
                await self.aclose()
                raise NotFound(f"stream {self.stream} does not exist (run ensure_topology)") from error
            log.info("replay consumer vanished; recreating", extra={"subject": self.subject})
            await self._drop_consumer()
            return
        except (nats.errors.Error, OSError) as error:
            if self._bus.nc.is_closed:
                self._closed = True
                return
            log.info("replay interrupted; resuming", extra={"subject": self.subject, "error": repr(error)})
            await self._drop_consumer()
            await asyncio.sleep(0.5)
            return
        for msg in msgs:
            metadata = msg.metadata
            sequence = metadata.sequence.stream
            if sequence <= max(self.last_sequence, self._buffer[-1][0] if self._buffer else 0):
                continue
            self._buffer.append((sequence, msg.data, dict(msg.headers or {})))
            if not self.deliver_new and metadata.num_pending == 0:
                self._caught_up = True

    async def _drop_consumer(self) -> None:
        sub, consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and self._bus.nc.is_connected:
            with contextlib.suppress(Exception):
                await self._bus.js.delete_consumer(self.stream, consumer)

    async def unsubscribe(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating and delete the consumer (idempotent)."""
        self._closed = True
        self._buffer.clear()
        self._bus._forget(self)
        await self._drop_consumer()


class Replaying(BusBase):
    def replay(
        self,
        stream: str,
        subject: str,
        *,
        start_sequence_after: int | None = None,
        deliver_new: bool = True,
        batch: int = 100,
        fetch_timeout: float = 1.0,
    ) -> Replay:
        """Messages on ``subject`` with stream sequence > ``start_sequence_after``, in order, as
        ``(stream_seq, data, headers)``; see :class:`Replay` for the semantics.

        Use as ``async for seq, data, headers in bus.replay(...)`` (``await`` first is also accepted)
        and close it (``async with`` or ``aclose()``) when leaving early.
        """
        return Replay(
            self,
            stream,
            subject,
            start_sequence_after=start_sequence_after,
            deliver_new=deliver_new,
            batch=batch,
            fetch_timeout=fetch_timeout,
        )
