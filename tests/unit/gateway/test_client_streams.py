"""A refused upload's remaining messages are read before the status goes out (bounded in bytes and time)."""

from __future__ import annotations

import asyncio

import pytest

from multipass.errors import InvalidInput, Violation
from multipass.v1 import jobs_pb2
from multipass_gateway.api.client_streams import ClientStream, drained_on_refusal


class Requests:
    """A client stream that records how many messages the server read."""

    def __init__(self, count: int, chunk: int = 100, delay: float = 0.0):
        self.count, self.chunk, self.delay, self.read = count, chunk, delay, 0

    def __aiter__(self):
        return self._messages()

    async def _messages(self):
        for _ in range(self.count):
            if self.delay:
                await asyncio.sleep(self.delay)
            self.read += 1
            yield jobs_pb2.UploadImageRequest(chunk=b"x" * self.chunk)


async def refuse_after_first(requests: Requests, **drain) -> None:
    stream = ClientStream(requests)
    try:
        await stream.next_or_none()
        raise InvalidInput.of([Violation("chunk", "refused")])
    except InvalidInput:
        await stream.drain(**drain)
        raise


async def test_a_refusal_reads_the_rest_of_the_stream_before_raising():
    requests = Requests(50)
    with pytest.raises(InvalidInput):
        async with drained_on_refusal(ClientStream(requests)) as stream:
            await stream.next_or_none()
            raise InvalidInput.of([Violation("chunk", "refused")])
    assert requests.read == 50


async def test_draining_stops_at_the_byte_bound():
    requests = Requests(1000, chunk=1000)
    with pytest.raises(InvalidInput):
        await refuse_after_first(requests, max_bytes=10_000)
    assert 10 <= requests.read < 20


async def test_draining_stops_at_the_time_bound():
    requests = Requests(1000, delay=0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(InvalidInput):
        await refuse_after_first(requests, max_seconds=0.3)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert requests.read < 1000


async def test_success_and_other_errors_do_not_drain():
    requests = Requests(10)
    async with drained_on_refusal(ClientStream(requests)) as stream:
        assert (await stream.next_or_none()) is not None
    assert requests.read == 1
    failing = Requests(10)
    with pytest.raises(RuntimeError):
        async with drained_on_refusal(ClientStream(failing)) as stream:
            await stream.next_or_none()
            raise RuntimeError("a bug is not a refusal")
    assert failing.read == 1
