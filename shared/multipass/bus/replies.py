"""Request replies handed to their waiters as the connection's read loop parses them.

Every JetStream call (publish acknowledgements, KV writes, purges, stream infos) is a request. nats-py
answers them through a callback subscription: each reply goes through a queue, a task that awaits the
callback, a future and ``asyncio.wait_for``'s own future and timer. :class:`ReplyRouter` replaces that
path on one connection: the replies' wildcard inbox is a subscription of the kind nats-py uses for a
single-reply request (the read loop calls ``set_result`` on it directly), which routes each reply by its
token to the waiting request's future, and one timer handle bounds the wait. Same contract as nats-py's
``Client.request`` (``nats.errors.TimeoutError``, ``NoRespondersError`` raised by the caller), a third less
CPU per request (``multipass_bench``'s control plane spends most of its time on such round trips).
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


class ReplyRouter:
    """The replies' inbox of one connection; :meth:`install` makes the connection's requests use it."""

    def __init__(self, nc: NATS):
        self._nc = nc
        self._waiting: dict[str, asyncio.Future] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._cut = 0

    async def install(self) -> None:
        """Subscribe the inbox and route this connection's requests through it."""
        self._prefix = self._nc.new_inbox() + "."
        self._cut = len(self._prefix)
        await self._nc.subscribe(self._prefix + "*", future=self)  # type: ignore[arg-type]
        self._nc._request_new_style = self.request  # type: ignore[method-assign]

    # what nats-py calls on a single-reply subscription's future, here for every reply ---------------

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[self._cut :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    # requests ----------------------------------------------------------------------------------------

    async def request(
        self, subject: str, payload: bytes, timeout: float = 1, headers: dict | None = None
    ) -> Msg:
        nc = self._nc
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[token] = future
        try:
            await nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            timer = loop.call_later(timeout, _expire, future)
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            self._waiting.pop(token, None)


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
