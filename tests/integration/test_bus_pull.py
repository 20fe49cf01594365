"""Pulling from a JetStream consumer (multipass.bus.pull.Puller): a message is handed out as soon as it
arrives, never held for the rest of a batch, and no more are delivered than the caller asked for."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats.errors
import pytest
from nats.js import api

from multipass.bus import Bus
from multipass.bus.pull import Puller


@pytest.fixture
async def pulled(bus: Bus):
    """(a Puller on a fresh durable consumer of a fresh stream, a publish function, the consumer info)."""
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    await bus.js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    await bus.js.add_consumer(
        name, api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30)
    )
    sub = await bus.js.pull_subscribe_bind(durable="c", stream=name)

    async def publish(count: int = 1) -> None:
        for _ in range(count):
            await bus.js.publish(f"{name.lower()}.x", str(time.monotonic()).encode())

    async def info():
        return await bus.js.consumer_info(name, "c")

    try:
        yield Puller(sub), publish, info
    finally:
        await sub.unsubscribe()
        await bus.js.delete_stream(name)


async def test_a_message_is_returned_as_soon_as_it_arrives_not_when_the_batch_would_be_full(pulled):
    puller, publish, _info = pulled
    for delay in (0.05, 0.2, 0.0):
        later = asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(publish()))
        started = time.monotonic()
        msgs = await puller.fetch(32, 2.0)
        waited = time.monotonic() - started
        later.cancel()
        assert len(msgs) == 1
        assert waited < delay + 0.25, (delay, waited)
        assert time.monotonic() - float(msgs[0].data) < 0.25  # held for no batch
        await msgs[0].ack()


async def test_messages_that_arrive_meanwhile_come_with_the_next_fetch_and_never_more_than_asked(pulled):
    puller, publish, info = pulled
    await publish(5)
    first = await puller.fetch(3, 2.0)
    assert 1 <= len(first) <= 3
    # Delivered but not handed out never exceeds what was asked: at most 3 await their ack.
    assert (await info()).num_ack_pending <= 3
    rest = []
    while len(first) + len(rest) < 5:
        rest += await puller.fetch(3, 2.0)
    assert len(first) + len(rest) == 5
    for msg in first + rest:
        await msg.ack()
    await publish(2)
    later = await puller.fetch(32, 2.0)
    while len(later) < 2:
        later += await puller.fetch(32, 2.0)
    assert len(later) == 2


async def test_nothing_within_the_timeout_raises_and_the_next_message_still_comes(pulled):
    puller, publish, _info = pulled
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await puller.fetch(8, 0.3)
    assert 0.25 < time.monotonic() - started < 1.0
    await publish()
    msgs = await puller.fetch(8, 2.0)
    assert len(msgs) == 1
    with pytest.raises(ValueError):
        await puller.fetch(0, 1.0)


async def test_after_an_idle_timeout_messages_are_not_held_until_an_old_request_expires(pulled):
    # An idle fetch that timed out leaves its request's 408 to arrive late; the fetches after it must
    # still hand each message out at once (nats-py's own fetch held them until a request expired).
    puller, publish, _info = pulled
    for _ in range(3):
        with pytest.raises(nats.errors.TimeoutError):
            await puller.fetch(32, 0.3)
        for _ in range(4):
            await asyncio.sleep(0.03)
            await publish()
            started = time.monotonic()
            msgs = await puller.fetch(32, 2.0)
            assert time.monotonic() - started < 0.3
            for msg in msgs:
                await msg.ack()


async def test_one_at_a_time_consumers_are_never_sent_a_second_message_while_they_work(pulled):
    puller, publish, info = pulled
    await publish(3)
    msgs = await puller.fetch(1, 2.0)
    assert len(msgs) == 1
    await asyncio.sleep(0.3)  # working on it: nothing more is delivered meanwhile
    assert (await info()).num_ack_pending == 1
    await msgs[0].ack()


async def test_a_consumer_loop_hands_every_event_over_within_milliseconds_across_idle_gaps(bus: Bus):
    """The orchestrator's shape: batches of 32, 32 handlers, acks unconfirmed; events come in bursts with
    idle seconds between them (fetches time out in between)."""
    name = f"LOOP{uuid.uuid4().hex[:8].upper()}"
    await bus.js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    lags: list[float] = []

    async def handler(delivery):
        from multipass.bus import Ack

        lags.append(time.monotonic() - float(delivery.data))
        return Ack()

    stop = asyncio.Event()
    loop = asyncio.create_task(
        bus.consume(
            stream=name,
            durable="loop",
            filter_subject=f"{name.lower()}.>",
            handler=handler,
            ack_wait=30,
            max_deliver=3,
            max_ack_pending=256,
            stop=stop,
            batch=32,
            concurrency=32,
            confirm_acks=False,
        )
    )
    try:
        for gap in (1.2, 0.4, 1.1, 0.05, 1.3):
            await asyncio.sleep(gap)
            for _ in range(3):
                await bus.js.publish(f"{name.lower()}.x", str(time.monotonic()).encode())
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await loop
        await bus.js.delete_stream(name)
    assert len(lags) == 15
    assert max(lags) < 0.25, sorted(lags)  # nats-py's fetch held some for 0.3-1 s here
