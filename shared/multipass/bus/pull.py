"""Pulling from a JetStream pull consumer: the messages there are, as soon as the first one is.

nats-py's ``PullSubscription.fetch(batch>1, timeout)`` can hold a message it already has: once its
no-wait probe finds nothing it sends a waiting pull request, and after that request's first message it
keeps waiting for the rest of the batch until the timeout (the server ends a waiting request only when it
expires). A handler then gets an event up to ``timeout`` (a second) after it was stored.

:class:`Puller` keeps one pull request open at a time, of at most the batch its caller can take, and
returns as soon as one message has arrived, with every other message already delivered; the messages the
open request brings in later are returned by the next call without a new request. A request is sent only
when none is open (never asked, used up, or expired), so the messages delivered but not yet handed out
never exceed what the caller asked for (a consumer that takes one pass at a time is never sent a second
one while it works on the first).
"""

from __future__ import annotations

import json
import time

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

#: The server ends a pull request this much before the caller's own deadline, so the request's 408
#: arrives while the caller still waits for it.
EXPIRY_MARGIN = 0.05
#: No request is sent with less time than this left before the caller's deadline.
MIN_REQUEST_SECONDS = 0.1


class Puller:
    """Fetches of one pull subscription (one per subscription; not for concurrent use)."""

    def __init__(self, sub: JetStreamContext.PullSubscription):
        self._sub = sub
        self._inbox = sub._sub  # the subscription the server delivers to (nats-py's own)
        self._open_until = 0.0  # time.monotonic() when the open request expires at the server
        self._capacity = 0  # messages the open request may still bring

    def _request_open(self) -> bool:
        return self._capacity > 0 and time.monotonic() < self._open_until

    def _take(self, msg: Msg) -> Msg | None:
        """``msg`` if it is a message; None for a status.

        A 408 (request expired) ends the open request only near its expiry: earlier, it is the late 408 of
        a request that ended before this one was sent. A 409 (the consumer's leader changed, too many
        waiting requests, ...) ends it at once; a 404 answers only the no-wait requests this class never
        sends. Any other status raises ``nats.js.errors.APIError``.
        """
        status = JetStreamContext.is_status_msg(msg)
        if not status:
            self._capacity = max(0, self._capacity - 1)
            return msg
        if status == api.StatusCode.REQUEST_TIMEOUT:
            if time.monotonic() >= self._open_until - EXPIRY_MARGIN:
                self._capacity = 0
            return None
        if status == api.StatusCode.CONFLICT:
            self._capacity = 0
            return None
        if status in (api.StatusCode.NO_MESSAGES, api.StatusCode.CONTROL_MESSAGE):
            return None
        self._capacity = 0
        raise nats.js.errors.APIError.from_msg(msg)

    def _drain(self, limit: int) -> list[Msg]:
        """Messages already delivered, without waiting (statuses skipped)."""
        queue = self._inbox._pending_queue
        found: list[Msg] = []
        while len(found) < limit and not queue.empty():
            msg = queue.get_nowait()
            self._inbox._pending_size -= len(msg.data)
            taken = self._take(msg)
            if taken is not None:
                found.append(taken)
        return found

    async def _ask(self, batch: int, timeout: float) -> None:
        expires = max(0.001, timeout - EXPIRY_MARGIN)
        request = {"batch": batch, "expires": int(expires * 1_000_000_000)}
        await self._sub._nc.publish(self._sub._nms, json.dumps(request).encode(), self._sub._deliver)
        self._open_until = time.monotonic() + expires
        self._capacity = batch

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """1..``batch`` messages; ``nats.errors.TimeoutError`` when none came within ``timeout`` seconds."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        found = self._drain(batch)
        if found:
            return found
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if not self._request_open():
                if left < MIN_REQUEST_SECONDS:
                    raise nats.errors.TimeoutError  # too little time left to be worth a request
                await self._ask(batch, left)
            elif left <= 0:
                raise nats.errors.TimeoutError
            wait = max(0.001, min(left, self._open_until - time.monotonic() + EXPIRY_MARGIN))
            try:
                msg = await self._inbox.next_msg(timeout=wait)
            except (TimeoutError, nats.errors.TimeoutError):
                if time.monotonic() >= self._open_until:
                    self._capacity = 0  # expired without its 408 reaching us: ask again if time is left
                continue
            taken = self._take(msg)
            if taken is not None:
                return [taken, *self._drain(batch - 1)]
