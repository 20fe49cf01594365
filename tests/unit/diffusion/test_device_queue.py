"""The device's turn order and idle accounting, with a hand-driven clock and a real device thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from multipass_diffusion import metrics
from multipass_diffusion.device_queue import DeviceQueue


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown()


async def test_the_gap_runs_from_the_end_of_one_pass_to_the_start_of_the_held_next(executor):
    clock = Clock()
    queue = DeviceQueue(executor, clock=clock)
    idle_before = metrics.DEVICE_IDLE._sum.get()
    busy_before = metrics.DEVICE_BUSY._value.get()
    stop, cancel = asyncio.Event(), threading.Event()

    def work(seconds):
        def run():
            clock.now += seconds
            return seconds

        return run

    queue.hold()  # delivered to an idle device: the window opens now
    clock.now += 0.25  # its inputs download
    queue.hold()  # a second pass arrives meanwhile
    assert await queue.wait_turn(stop, cancel)
    assert await queue.run(work(2.0)) == 2.0
    queue.end_turn()
    clock.now += 0.125  # the second pass was held all along: this is device idle time
    assert await queue.wait_turn(stop, cancel)
    await queue.run(work(1.0))
    queue.end_turn()
    assert queue.history == [(0.25, 2.0), (0.125, 1.0)]
    assert metrics.DEVICE_IDLE._sum.get() - idle_before == pytest.approx(0.375)
    assert metrics.DEVICE_BUSY._value.get() - busy_before == pytest.approx(3.0)
    # Nothing held when the device finished: the wait for the next delivery is no device gap.
    clock.now += 5.0
    queue.hold()
    assert await queue.wait_turn(stop, cancel)
    await queue.run(work(1.0))
    queue.end_turn()
    assert queue.history[-1] == (0.0, 1.0)


async def test_a_window_whose_held_passes_all_leave_is_dropped(executor):
    clock = Clock()
    queue = DeviceQueue(executor, clock=clock)
    queue.hold()
    clock.now += 3.0
    queue.release()  # its input fetch failed: the device had nothing it could run
    clock.now += 1.0
    queue.hold()
    clock.now += 0.5
    assert await queue.wait_turn(asyncio.Event(), threading.Event())
    await queue.run(lambda: None)
    queue.end_turn()
    assert queue.history == [(0.5, 0.0)] and queue.held == 0


async def test_waiting_passes_take_turns_in_order_and_give_them_up_on_stop_or_cancel(executor):
    queue = DeviceQueue(executor)
    stop = asyncio.Event()
    flags = [threading.Event() for _ in range(4)]
    order: list[int] = []

    async def one(index: int) -> bool:
        queue.hold()
        if not await queue.wait_turn(stop, flags[index]):
            queue.release()
            return False
        try:
            order.append(index)
            await asyncio.sleep(0.05)
            await queue.run(lambda: None)
        finally:
            queue.end_turn()
        return True

    first = asyncio.create_task(one(0))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(one(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    flags[2].set()
    queue.poke()  # the cancelled pass leaves at once, the others keep their places
    assert await asyncio.wait_for(waiting[1], 0.03) is False
    assert await first and await waiting[0]
    assert order == [0, 1]
    stop.set()  # the worker stops while pass 3 waits (it got the turn just now, or still waits)
    results = await asyncio.gather(waiting[2])
    assert order == [0, 1, 3] or results == [False]
    # No turn leaked: the device is free again.
    assert await asyncio.wait_for(queue.wait_turn(asyncio.Event(), threading.Event()), 1.0)
    queue.end_turn()


async def test_stop_hands_back_a_pass_waiting_behind_a_long_one(executor):
    queue = DeviceQueue(executor)
    stop = asyncio.Event()
    release_device = threading.Event()
    assert await queue.wait_turn(stop, threading.Event())
    running = asyncio.create_task(queue.run(lambda: release_device.wait(5)))
    queue.hold()
    waiter = asyncio.create_task(queue.wait_turn(stop, threading.Event()))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    stop.set()
    assert await asyncio.wait_for(waiter, 0.5) is False  # promptly, while the device is still busy
    assert not running.done()
    release_device.set()
    await running
    queue.end_turn()
