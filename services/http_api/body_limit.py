"""Refusing request bodies larger than the configured limit with a clean 413 every client can read.

The application never receives more than the limit: a declared ``Content-Length`` over it is refused
before the application runs, and a body that grows past it while it streams in (chunked uploads) is cut
off where it crosses it. Most clients (httpx, requests with multipart, browsers) send the whole body
before they read the answer, and a server that answers and closes while the body is still arriving makes
them see a reset connection instead of the 413. So the refused body is read and discarded first, up to
:data:`DRAIN_FACTOR` times the limit and for at most :data:`DRAIN_SECONDS`; a body beyond that (or a
client that waits for ``100 Continue`` before sending it) gets the 413 at once and the connection closes.
"""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: A refused body is read and discarded up to this many times the limit before the 413 is sent.
DRAIN_FACTOR = 4
#: Longest time spent discarding a refused body (a client trickling it in gets its 413 after this).
DRAIN_SECONDS = 30.0


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body crosses the limit (an HTTPException, so the framework's
    body parsing passes it on unchanged rather than calling it a parse error)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")
        self.limit = limit


def _too_large_body(limit: int) -> bytes:
    return json.dumps(
        {
            "error": f"request body larger than {limit} bytes",
            "errors": {"body": [f"at most {limit} bytes allowed"]},
        }
    ).encode()


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.strip().lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )


class _BodyReader:
    """The request body as the application sees it: counted, and cut off where it crosses the limit."""

    def __init__(self, receive: Receive, limit: int):
        self._receive = receive
        self.limit = limit
        #: Body bytes taken from the client so far (those handed on and those discarded).
        self.received = 0
        #: The client has sent its whole body (or gone away): nothing is left to read.
        self.finished = False
        #: The body crossed the limit; the application got BodyTooLarge.
        self.crossed = False

    async def _next(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.finished = True
        elif message["type"] == "http.disconnect":
            self.finished = True
        return message

    async def receive(self) -> Message:
        if self.crossed:
            raise BodyTooLarge(self.limit)
        message = await self._next()
        if self.received > self.limit:
            self.crossed = True
            raise BodyTooLarge(self.limit)
        return message

    async def discard_rest(self, allowance: int, seconds: float) -> None:
        """Read and drop what is left of the body, while at most ``allowance`` bytes came in all told."""
        try:
            async with asyncio.timeout(seconds):
                while not self.finished and self.received <= allowance:
                    await self._next()
        except TimeoutError:
            pass


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        drain_factor: int = DRAIN_FACTOR,
        drain_seconds: float = DRAIN_SECONDS,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        #: Most body bytes read from a refused request before answering; beyond, the connection closes.
        self.drain_allowance = max_body_bytes * drain_factor
        self.drain_seconds = drain_seconds

    async def _refuse(self, body: _BodyReader, send: Send, *, drain: bool) -> None:
        if drain:
            await body.discard_rest(self.drain_allowance, self.drain_seconds)
        payload = _too_large_body(self.max_body_bytes)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if not body.finished:
            # Part of the body is still unread: the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _BodyReader(receive, self.max_body_bytes)
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            # Reading would invite a client waiting for "100 Continue" to send what is refused anyway,
            # and a body beyond the allowance is not worth reading: answer now and close.
            drain = declared <= self.drain_allowance and not _expects_continue(scope)
            await self._refuse(body, send, drain=drain)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.crossed and not started:
                # The application's own answer to BodyTooLarge: replaced by the 413 below.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:
            if not body.crossed or started:
                raise
        if body.crossed and not started:
            await self._refuse(body, send, drain=True)
