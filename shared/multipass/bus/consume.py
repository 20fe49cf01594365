"""Consuming a durable pull consumer with exactly one decision per message.

Every delivered message ends in exactly one of ``Ack()``, ``Nak(delay)`` or ``Term(reason)``, which the
handler returns; when it raises instead, the loop decides (docs/CONTRACTS.md, "One decision per
message"): a retriable :class:`~multipass.errors.MultipassError` is nak'ed with a delay growing with the
delivery count, a non-retriable one terminated, anything else logged as a bug and nak'ed. A Nak on the
last allowed delivery becomes a Term, and ``on_term`` hears of every Term the loop decides. While a
handler runs, the loop sends ``in_progress`` (a heartbeat) every ``ack_wait / 3``: a live consumer keeps
its message however long the handler runs, and a dead one's message is redelivered at most ``ack_wait``
after its last heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import nats.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from multipass.bus.consumers import ConsumerAdmin
from multipass.bus.errors import nats_errors
from multipass.bus.publish import MSG_ID_HEADER
from multipass.bus.pull import Puller
from multipass.errors import (
    InvalidInput,
    MultipassError,
    ResourceExhausted,
    Unavailable,
    Violation,
)
from multipass.logs import log_context

log = logging.getLogger(__package__)

#: Heartbeats (``in_progress``) per ack wait while a handler runs: two may be lost before a redelivery.
HEARTBEATS_PER_ACK_WAIT = 3
#: Nak delays in seconds by delivery count (1st failure, 2nd, ...); the last repeats.
DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Ack:
    """The work is done (or was already done): remove the message."""


@dataclass(frozen=True)
class Nak:
    """A transient fault: deliver the message again after ``delay`` seconds."""

    delay: float = 0.0


@dataclass(frozen=True)
class Term:
    """A permanent fault: never deliver the message again."""

    reason: str


Decision = Ack | Nak | Term


@dataclass(frozen=True)
class Delivery:
    """One delivered message, as a handler sees it (it cannot ack: it returns a decision)."""

    data: bytes
    subject: str
    headers: Mapping[str, str]
    num_delivered: int
    msg_id: str | None
    stream_sequence: int
    #: Messages left for the consumer after this one when it was delivered.
    num_pending: int = 0
    #: Deliveries allowed in all (``max_deliver`` of the consumer; -1 when unlimited).
    max_deliver: int = -1

    @property
    def is_last_delivery(self) -> bool:
        """True when a Nak will not bring the message back (the loop will turn it into a Term)."""
        return 0 < self.max_deliver <= self.num_delivered

    def parse(self, message_type: type[Message]) -> Message:
        """Decode the payload as ``message_type``; undecodable bytes are InvalidInput (so Term)."""
        message = message_type()
        try:
            message.ParseFromString(self.data)
        except DecodeError as error:
            raise InvalidInput.of(
                [
                    Violation(
                        "message",
                        f"{len(self.data)} bytes on {self.subject} do not decode as {message_type.__name__}",
                    )
                ]
            ) from error
        return message

    @classmethod
    def from_msg(cls, msg: Msg, max_deliver: int = -1) -> Delivery:
        metadata = msg.metadata
        headers = dict(msg.headers or {})
        return cls(
            data=msg.data,
            subject=msg.subject,
            headers=headers,
            num_delivered=metadata.num_delivered,
            msg_id=headers.get(MSG_ID_HEADER),
            stream_sequence=metadata.sequence.stream,
            num_pending=metadata.num_pending,
            max_deliver=max_deliver,
        )


Handler = Callable[[Delivery], Awaitable[Decision]]
TermHook = Callable[[Delivery, str], Awaitable[None]]


def backoff_delay(backoff: Sequence[float], num_delivered: int) -> float:
    """The nak delay after the ``num_delivered``-th delivery failed (the last entry repeats)."""
    if not backoff:
        return 0.0
    return float(backoff[min(max(num_delivered, 1), len(backoff)) - 1])


class Consuming(ConsumerAdmin):
    async def consume(
        self,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: Handler,
        ack_wait: float,
        max_deliver: int,
        max_ack_pending: int,
        stop: asyncio.Event,
        batch: int = 1,
        concurrency: int = 1,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        fetch_timeout: float = 1.0,
        on_term: TermHook | None = None,
        prefetch_gate: Callable[[], Awaitable[object]] | None = None,
        confirm_acks: bool = True,
    ) -> None:
        """Run ``handler`` on the messages of a durable pull consumer until ``stop`` is set.

        Up to ``concurrency`` handlers run at once; one fetch asks for at most ``min(batch, free
        slots)`` messages, so no fetched message waits unattended. With ``prefetch_gate``, a fetch while
        handlers are in flight waits until the gate's awaitable completes (or every handler ended): a
        worker takes its next message only once its device is busy, so an idle replica beside it gets the
        message instead of it waiting behind this one's current work. When ``stop`` is set the loop stops
        fetching, lets the handlers in flight finish and decide, then unsubscribes. Cancelling the task
        instead naks the messages in flight (delay 0) so another worker takes them at once.

        ``confirm_acks=False`` sends an Ack without waiting for the server's confirmation (naks and terms
        are still confirmed): the handler's slot is free one round trip sooner. Choose it only where
        handling a message twice is harmless: an ack lost on the way leaves the message to be redelivered
        after ``ack_wait``, unnoticed (a confirmed ack that times out is only logged; either way the
        message comes back). The ack still goes out on this connection before anything sent after it,
        so the server counts it before this loop's next fetch.
        """
        if concurrency < 1 or batch < 1:
            raise ValueError("concurrency and batch must be >= 1")
        await self.ensure_consumer(
            stream=stream,
            durable=durable,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
        )
        with nats_errors(f"bind consumer {durable}"):
            sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        self._remember(sub)
        puller = Puller(sub)
        in_flight: set[asyncio.Task] = set()
        stopped = asyncio.ensure_future(stop.wait())
        log.info("consuming", extra={"stream": stream, "durable": durable, "filter_subject": filter_subject})
        try:
            while not stop.is_set() and not self._closing:
                free = concurrency - len(in_flight)
                if free <= 0:
                    await asyncio.wait({*in_flight, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if prefetch_gate is not None and in_flight:
                    gate = asyncio.ensure_future(prefetch_gate())
                    try:
                        await asyncio.wait({gate, *in_flight, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        gate.cancel()
                    if not gate.done() or gate.cancelled():
                        continue  # a handler ended or we are stopping: look again
                try:
                    msgs = await self._fetch_unless_stopping(puller, min(batch, free), fetch_timeout, stopped)
                    if msgs is None:
                        break
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except (nats.errors.Error, OSError) as error:
                    if self.nc.is_closed:
                        break
                    # A restarted server, a deleted consumer: wait a moment, re-create it, go on.
                    log.warning("fetch failed; retrying", extra={"durable": durable, "error": repr(error)})
                    await self._pause_unless(stop, 1.0)
                    with contextlib.suppress(Unavailable, nats.errors.Error):
                        await self.ensure_consumer(
                            stream=stream,
                            durable=durable,
                            filter_subject=filter_subject,
                            ack_wait=ack_wait,
                            max_deliver=max_deliver,
                            max_ack_pending=max_ack_pending,
                        )
                    continue
                for msg in msgs:
                    task = asyncio.create_task(
                        self._handle(
                            msg,
                            handler,
                            ack_wait=ack_wait,
                            max_deliver=max_deliver,
                            backoff=backoff,
                            on_term=on_term,
                            confirm_acks=confirm_acks,
                        )
                    )
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            raise
        finally:
            stopped.cancel()
            await self._release(sub)
            log.info("stopped consuming", extra={"stream": stream, "durable": durable})

    async def _fetch_unless_stopping(
        self, puller: Puller, batch: int, timeout: float, stopped: asyncio.Future
    ) -> list[Msg] | None:
        """One fetch; None as soon as the loop is told to stop or :meth:`close` begins.

        The pending pull is abandoned rather than waited out (up to ``timeout``, a second by default, on
        every stop of every service). A message the server sends for it before the unsubscribe reaches
        it lands in the inbox and is nakked by :meth:`_release`; one that arrived while the fetch was
        being cancelled is nakked here: either way another consumer gets it at once.
        """
        fetch = asyncio.ensure_future(puller.fetch(batch, timeout))
        closing = asyncio.ensure_future(self._closing_event.wait())
        try:
            await asyncio.wait({fetch, closing, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if fetch.done():
            return fetch.result()
        fetch.cancel()
        try:
            late = await fetch
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this loop itself is being cancelled
            return None
        except Exception:  # noqa: BLE001 - the pull is abandoned either way
            return None
        for msg in late:
            with contextlib.suppress(Exception):
                await msg.nak()
        return None

    async def _release(self, sub: JetStreamContext.PullSubscription) -> None:
        """Unsubscribe, then nak any message a late pull delivered into our inbox so nobody waits ack_wait."""
        if not self._forget(sub):
            return
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and not JetStreamContext.is_status_msg(msg):
                with contextlib.suppress(Exception):
                    await msg.nak()

    @staticmethod
    async def _pause_unless(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _handle(
        self,
        msg: Msg,
        handler: Handler,
        *,
        ack_wait: float,
        max_deliver: int,
        backoff: Sequence[float],
        on_term: TermHook | None,
        confirm_acks: bool = True,
    ) -> None:
        delivery = Delivery.from_msg(msg, max_deliver)
        context = {
            "subject": delivery.subject,
            "stream_seq": delivery.stream_sequence,
            "msg_id": delivery.msg_id,
        }
        with log_context(**context):
            keep_alive = _Heartbeat(msg, ack_wait / HEARTBEATS_PER_ACK_WAIT)
            try:
                decision, by_loop, failure = await self._decide(delivery, handler, backoff)
            except asyncio.CancelledError:
                # Shutting down mid-pass: hand the message straight to another worker.
                await self._settle(msg, Nak(0.0))
                raise
            finally:
                keep_alive.stop()
            if isinstance(decision, Nak) and delivery.is_last_delivery:
                reason = failure or f"gave up after {delivery.num_delivered} deliveries"
                log.error("last delivery failed; term", extra={"reason": reason})
                decision, by_loop = Term(reason), True
            await self._settle(msg, decision, confirm=confirm_acks or not isinstance(decision, Ack))
            if isinstance(decision, Term) and by_loop and on_term is not None:
                try:
                    await on_term(delivery, decision.reason)
                except Exception:
                    log.exception("on_term hook failed")

    @staticmethod
    async def _decide(
        delivery: Delivery, handler: Handler, backoff: Sequence[float]
    ) -> tuple[Decision, bool, str]:
        """(decision, whether the loop rather than the handler made it, failure description)."""
        retry_delay = backoff_delay(backoff, delivery.num_delivered)
        try:
            decision = await handler(delivery)
        except MultipassError as error:
            failure = f"{error.code_name}: {error}"
            if not error.retriable:
                log.warning("permanent failure; term", extra={"error": str(error), "code": error.code_name})
                return Term(failure), True, failure
            if isinstance(error, ResourceExhausted):
                retry_delay = max(retry_delay, error.retry_after_seconds)
            log.warning("transient failure; nak", extra={"error": str(error), "delay": retry_delay})
            return Nak(retry_delay), True, failure
        except Exception as error:
            log.exception("handler failed unexpectedly; nak with backoff")
            return Nak(retry_delay), True, f"INTERNAL: {type(error).__name__}: {error}"
        if isinstance(decision, (Ack, Nak, Term)):
            return decision, False, ""
        log.error("handler returned %r instead of Ack/Nak/Term; nak with backoff", decision)
        return Nak(retry_delay), True, f"INTERNAL: handler returned {decision!r}"

    async def _settle(self, msg: Msg, decision: Decision, *, confirm: bool = True) -> None:
        """Send the decision and wait for the server to confirm it, so counters reflect it on return.

        With ``confirm=False`` the decision is only sent (in order with everything sent after it on this
        connection); a lost one is noticed by nobody and the server redelivers after ``ack_wait``.
        """
        if isinstance(decision, Ack):
            payload = b"+ACK"
        elif isinstance(decision, Nak):
            delay_ns = int(decision.delay * 1e9)
            payload = b"-NAK" + (f' {{"delay": {delay_ns}}}'.encode() if delay_ns > 0 else b"")
        else:
            payload = b"+TERM " + decision.reason.replace("\n", " ")[:512].encode()
        try:
            if confirm:
                await self.nc.request(msg.reply, payload, timeout=5.0)
            else:
                await self.nc.publish(msg.reply, payload)
        except Exception as error:  # noqa: BLE001 - the server redelivers after ack_wait
            log.warning(
                "could not confirm %s; the message may be redelivered",
                type(decision).__name__,
                extra={"error": repr(error)},
            )


class _Heartbeat:
    """Tells the server every ``interval`` seconds that ``msg`` is still being handled (``in_progress``),
    until :meth:`stop`. A timer rather than a task: most handlers end long before the first beat."""

    def __init__(self, msg: Msg, interval: float):
        self._msg = msg
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(interval, self._beat)
        self._sending: asyncio.Future | None = None

    def _beat(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send())
        self._timer = self._loop.call_later(self._interval, self._beat)

    async def _send(self) -> None:
        try:
            await self._msg.in_progress()
        except Exception as error:  # noqa: BLE001 - a missed beat is retried next interval
            log.debug("in_progress failed", extra={"error": repr(error)})

    def stop(self) -> None:
        self._timer.cancel()
        if self._sending is not None:
            self._sending.cancel()
