"""Client-streaming requests (uploads) that end cleanly when the gateway refuses them part-way.

A handler that raises while the client is still writing ends the HTTP/2 stream under the client, which
may then read a reset ("Internal error from Core") instead of the gateway's status. After a refusal the
rest of the request is read and dropped, bounded in bytes and time, so the client reads the real answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Generic, TypeVar

from google.protobuf.message import Message

from multipass.errors import MultipassError

#: At most this much of a refused upload is read and dropped before the status goes out.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
#: ... and for at most this long.
DRAIN_MAX_SECONDS = 5.0

RequestT = TypeVar("RequestT", bound=Message)


class ClientStream(Generic[RequestT]):
    """One pass over a client stream's messages, with :meth:`drain` for what is left after a refusal."""

    def __init__(self, requests: AsyncIterable[RequestT]):
        self._iterator: AsyncIterator[RequestT] = aiter(requests)

    def __aiter__(self) -> ClientStream[RequestT]:
        return self

    async def __anext__(self) -> RequestT:
        return await anext(self._iterator)

    async def next_or_none(self) -> RequestT | None:
        try:
            return await anext(self._iterator)
        except StopAsyncIteration:
            return None

    async def drain(
        self, *, max_bytes: int = DRAIN_MAX_BYTES, max_seconds: float = DRAIN_MAX_SECONDS
    ) -> None:
        """Read and drop the messages left, until the client half-closes or a bound is reached."""
        read = 0
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max_seconds):
                async for message in self._iterator:
                    read += message.ByteSize()
                    if read > max_bytes:
                        return


@contextlib.asynccontextmanager
async def drained_on_refusal(stream: ClientStream):
    """Run an upload handler's body; when it refuses the request, drain the stream before the status goes out."""
    try:
        yield stream
    except MultipassError:
        await stream.drain()
        raise
