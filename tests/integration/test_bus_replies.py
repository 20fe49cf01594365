"""Requests on the bus's connection: each reply reaches its own caller, in any order, and a missing one
times out (or says nobody listens) without leaving anything behind."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import pytest

from multipass import names
from multipass.bus import Bus


async def test_concurrent_publishes_each_get_their_own_acknowledgement(bus: Bus):
    acks = await asyncio.gather(
        *(
            bus.publish(names.diffusion_pass_subject("tiny"), f"p{index}".encode(), msg_id=f"reply-{index}")
            for index in range(200)
        )
    )
    assert sorted(ack.seq for ack in acks) == list(range(1, 201))
    again = await bus.publish(names.diffusion_pass_subject("tiny"), b"p7", msg_id="reply-7")
    assert again.duplicate and again.seq == acks[7].seq


async def test_replies_in_another_order_reach_the_caller_that_asked(bus: Bus):
    async def answer(msg):
        await asyncio.sleep(0.05 / (1 + int(msg.data)))  # later questions are answered first
        await msg.respond(b"answer " + msg.data)

    await bus.nc.subscribe("replies.echo", cb=answer)
    answers = await asyncio.gather(
        *(bus.nc.request("replies.echo", str(i).encode(), timeout=2) for i in range(20))
    )
    assert [a.data for a in answers] == [f"answer {i}".encode() for i in range(20)]


async def test_an_unanswered_request_times_out_and_one_nobody_hears_says_so(bus: Bus):
    async def ignore(_msg) -> None:
        return None

    async def ok(msg) -> None:
        await msg.respond(b"ok")

    await bus.nc.subscribe("replies.silent", cb=ignore)
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await bus.nc.request("replies.silent", b"?", timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(nats.errors.NoRespondersError):
        await bus.nc.request("replies.nobody", b"?", timeout=2)
    # Nothing waits any more: a late reply to either is dropped, and the next request works.
    await bus.nc.subscribe("replies.ok", cb=ok)
    assert (await bus.nc.request("replies.ok", b"", timeout=2)).data == b"ok"
    router_waiting = bus.nc._request_new_style.__self__._waiting
    assert router_waiting == {}
