"""NATS JetStream for Multipass: connecting, topology, publishing, consuming with one decision per message.

Consuming (:meth:`Bus.consume`) follows one rule: every delivered message ends in exactly one of
``Ack()``, ``Nak(delay)`` or ``Term(reason)``, which the handler returns. When the handler raises
instead, the loop decides:

* a retriable :class:`~multipass.errors.MultipassError` (``Unavailable``, ``ResourceExhausted``,
  ``DeadlineExceeded``) is nak'ed with a delay that grows with the delivery count (``backoff``);
* a non-retriable ``MultipassError`` (``InvalidInput``, ``NotFound``, ...) is terminated: retrying the
  same message cannot succeed;
* any other exception is a bug: it is logged once with its traceback and nak'ed with the same backoff,
  so a bug neither loses the work nor spins on it; after ``max_deliver`` deliveries it is terminated.

A ``Nak`` on the last allowed delivery becomes a ``Term`` (JetStream would otherwise silently stop
redelivering it); ``on_term`` hears about every termination the loop decides, so its owner can publish
a ``failed`` event. While a handler runs, the loop sends ``in_progress`` every ``ack_wait / 3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from multipass import topology
from multipass.errors import (
    InvalidInput,
    MultipassError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Violation,
)
from multipass.logs import log_context
from multipass.replay import Replay

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
#: Nak delays in seconds by delivery count (1st failure, 2nd, ...); the last repeats.
DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_CONNECTION_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
    OSError,
)


# --- decisions -------------------------------------------------------------------------------------


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


class CoreSubscription:
    """A core NATS subscription; ``unsubscribe()`` ends it (idempotent)."""

    def __init__(self, bus: Bus, sub: Subscription):
        self._bus = bus
        self._sub = sub
        self.subject = sub.subject

    async def unsubscribe(self) -> None:
        if self._bus._forget(self):
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()


def backoff_delay(backoff: Sequence[float], num_delivered: int) -> float:
    """The nak delay after the ``num_delivered``-th delivery failed (the last entry repeats)."""
    if not backoff:
        return 0.0
    return float(backoff[min(max(num_delivered, 1), len(backoff)) - 1])


@contextlib.contextmanager
def nats_errors(what: str):
    """Turn connection-level NATS failures into Unavailable and oversized payloads into InvalidInput."""
    try:
        yield
    except nats.errors.MaxPayloadError as error:
        raise InvalidInput.of([Violation("message", f"too large to {what}: {error}")]) from error
    except _CONNECTION_ERRORS as error:
        raise Unavailable(f"NATS unavailable ({what}): {type(error).__name__} {error}".rstrip()) from error


# --- the bus ---------------------------------------------------------------------------------------


class Bus:
    """One NATS connection with JetStream; create with :meth:`connect`, end with :meth:`close`."""

    def __init__(self, nc: NATS, name: str, url: str):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.name = name
        self.url = url
        self._live: set[object] = set()
        self._kv: dict[str, KeyValue] = {}
        self._closing = False
        self._closing_event = asyncio.Event()

    # connection ----------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        connect_timeout: float = 5.0,
        max_reconnect_wait: float = 5.0,
        **opts,
    ) -> Bus:
        """Connect to ``url``, or raise Unavailable if that fails for ``connect_timeout`` seconds.

        Once connected, the client reconnects forever with exponential backoff (capped at
        ``max_reconnect_wait``, jittered) and replays its subscriptions; ``opts`` go to ``nats.connect``.
        """
        nc = NATS()
        ref: list[Bus] = []

        async def disconnected() -> None:
            if not (ref and ref[0]._closing):
                log.warning("nats disconnected", extra={"nats_url": url, "client": name})

        async def reconnected() -> None:
            log.info("nats reconnected", extra={"nats_url": str(nc.connected_url.geturl()), "client": name})

        async def closed() -> None:
            log.info("nats connection closed", extra={"client": name})

        async def error(err: Exception) -> None:
            if isinstance(err, (OSError, nats.errors.UnexpectedEOF, asyncio.TimeoutError)):
                log.debug("nats connection error", extra={"client": name, "error": repr(err)})
            else:
                log.warning("nats error", extra={"client": name, "error": repr(err)})

        def next_server(servers, _info):
            attempts = max((server.reconnects for server in servers), default=0)
            delay = min(max_reconnect_wait, 0.1 * 2 ** min(attempts, 16))
            return None, delay * random.uniform(0.5, 1.0)

        options = {
            "servers": [url],
            "name": name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "closed_cb": closed,
            "error_cb": error,
            "reconnect_to_server_handler": next_server,
            **opts,
        }
        try:
            await asyncio.wait_for(nc.connect(**options), connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as err:
            with contextlib.suppress(Exception):
                await nc.close()
            raise Unavailable(
                f"cannot connect to NATS at {url} within {connect_timeout:g}s: {err!r}"
            ) from err
        bus = cls(nc, name, url)
        ref.append(bus)
        log.info("nats connected", extra={"nats_url": url, "client": name})
        return bus

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    async def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe every live subscription first (a live pull subscription stalls drain), then drain."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        for live in list(self._live):
            with contextlib.suppress(Exception):
                await live.unsubscribe()
        self._live.clear()
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except Exception as error:  # noqa: BLE001 - closing must not fail
            log.warning("nats drain failed; closing", extra={"error": repr(error)})
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()

    def _remember(self, live: object) -> None:
        self._live.add(live)

    def _forget(self, live: object) -> bool:
        """Drop ``live`` from the subscriptions :meth:`close` ends; False if it was not there (any more)."""
        if live in self._live:
            self._live.discard(live)
            return True
        return False

    # topology ------------------------------------------------------------------------------------

    async def ensure_topology(self, *, replicas: int = 1) -> None:
        """Create or update the streams and KV buckets of :mod:`multipass.topology` (idempotent)."""
        with nats_errors("create streams"):
            await topology.ensure_topology(self.js, replicas)

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket (created by :meth:`ensure_topology`); NotFound if it does not exist."""
        if bucket not in self._kv:
            with nats_errors(f"open kv bucket {bucket}"):
                try:
                    self._kv[bucket] = await self.js.key_value(bucket)
                except nats.js.errors.BucketNotFoundError as error:
                    raise NotFound(f"kv bucket {bucket} does not exist (run ensure_topology)") from error
        return self._kv[bucket]

    async def kv_update(
        self,
        bucket: str,
        key: str,
        mutate: Callable[[bytes | None], bytes | None],
        *,
        attempts: int = 10,
    ) -> tuple[bytes | None, int]:
        """Compare-and-set ``key``: ``mutate(current or None)`` gives the new value, retried on conflicts.

        ``mutate`` returning None leaves the entry as it is. Returns (value written, revision).
        Raises Unavailable when ``attempts`` conflicting writers in a row kept winning.
        """
        store = await self.kv(bucket)
        for _ in range(attempts):
            with nats_errors(f"read {bucket}/{key}"):
                try:
                    entry = await store.get(key)
                    current, revision = entry.value, entry.revision
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    current, revision = None, 0
                except nats.js.errors.InvalidKeyError as error:
                    raise InvalidInput.of([Violation("key", f"got {key!r}; not a valid KV key")]) from error
            new = mutate(current)
            if new is None:
                return current, revision
            with nats_errors(f"write {bucket}/{key}"):
                try:
                    if revision == 0:
                        return new, await store.create(key, new)
                    return new, await store.update(key, new, last=revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                except nats.js.errors.BadRequestError as error:
                    if error.err_code == 10071:  # create: key exists (written meanwhile)
                        continue
                    raise
        raise Unavailable(f"{bucket}/{key}: {attempts} conflicting updates in a row")

    # publishing ----------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        message: Message | bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        attempts: int = 2,
    ) -> api.PubAck:
        """Publish to JetStream with ``Nats-Msg-Id`` = ``msg_id``; returns the PubAck (``.duplicate``).

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
                    return await self.js.publish(
                        subject, data, timeout=timeout, headers={**(headers or {}), MSG_ID_HEADER: msg_id}
                    )
            except Unavailable:
                if attempt >= attempts or self.nc.is_closed:
                    raise
                log.info(
                    "publish not acknowledged; sending again", extra={"subject": subject, "attempt": attempt}
                )
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    async def publish_core(
        self,
        subject: str,
        data: Message | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 2.0,
    ) -> None:
        """Core NATS publish (no persistence, at most once), flushed to the server."""
        payload = data.SerializeToString() if isinstance(data, Message) else bytes(data)
        with nats_errors(f"publish to {subject}"):
            await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)
            await self.nc.flush(timeout)

    async def subscribe_core(
        self, subject: str, callback: Callable[[Msg], Awaitable[None]]
    ) -> CoreSubscription:
        """Core NATS subscription; ``callback(msg)`` gets ``.subject``, ``.data``, ``.headers``.

        Exceptions from the callback are logged with their traceback and do not end the subscription.
        """

        async def guarded(msg: Msg) -> None:
            try:
                await callback(msg)
            except Exception:
                log.exception("subscription callback failed", extra={"subject": msg.subject})

        with nats_errors(f"subscribe to {subject}"):
            sub = await self.nc.subscribe(subject, cb=guarded)
            await self.nc.flush(2.0)
        handle = CoreSubscription(self, sub)
        self._remember(handle)
        return handle

    # consuming -----------------------------------------------------------------------------------

    async def ensure_consumer(
        self,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        ack_wait: float,
        max_deliver: int,
        max_ack_pending: int,
    ) -> api.ConsumerInfo:
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
            return await self.js.add_consumer(stream, config)

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
                    msgs = await self._fetch_unless_closing(sub, min(batch, free), fetch_timeout)
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

    async def _fetch_unless_closing(self, sub, batch: int, timeout: float) -> list[Msg] | None:
        """One fetch; None as soon as :meth:`close` begins (the pending pull is abandoned)."""
        fetch = asyncio.ensure_future(sub.fetch(batch=batch, timeout=timeout))
        closing = asyncio.ensure_future(self._closing_event.wait())
        try:
            await asyncio.wait({fetch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetch
            return None
        return fetch.result()

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
            keep_alive = asyncio.create_task(self._keep_alive(msg, ack_wait / 3))
            try:
                decision, by_loop, failure = await self._decide(delivery, handler, backoff)
            except asyncio.CancelledError:
                # Shutting down mid-pass: hand the message straight to another worker.
                await self._settle(msg, Nak(0.0))
                raise
            finally:
                keep_alive.cancel()
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

    async def _keep_alive(self, msg: Msg, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as error:  # noqa: BLE001 - a missed beat is retried next interval
                log.debug("in_progress failed", extra={"error": repr(error)})

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

    async def consumer_info(self, stream: str, durable: str) -> ConsumerState:
        """The consumer's counters; NotFound when it does not exist (yet)."""
        with nats_errors(f"read consumer {durable}"):
            try:
                info = await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError as error:
                raise NotFound(f"consumer {durable} on stream {stream} does not exist") from error
        return ConsumerState(
            stream=stream,
            durable=durable,
            num_pending=info.num_pending or 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_redelivered=info.num_redelivered or 0,
            num_waiting=info.num_waiting or 0,
            delivered_stream_seq=info.delivered.stream_seq if info.delivered else 0,
            ack_floor_stream_seq=info.ack_floor.stream_seq if info.ack_floor else 0,
        )

    # replay --------------------------------------------------------------------------------------

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
        ``(stream_seq, data, headers)``; see :class:`multipass.replay.Replay` for the semantics.

        Use as ``async for seq, data, headers in bus.replay(...)`` (``await`` first is also accepted)
        and close it (``async with`` or ``aclose()``) when leaving early.
        """
        replay = Replay(
            self,
            stream,
            subject,
            start_sequence_after=start_sequence_after,
            deliver_new=deliver_new,
            batch=batch,
            fetch_timeout=fetch_timeout,
        )
        return replay


__all__ = [
    "Ack",
    "Bus",
    "ConsumerState",
    "CoreSubscription",
    "DEFAULT_BACKOFF",
    "Decision",
    "Delivery",
    "Nak",
    "Term",
    "backoff_delay",
]
