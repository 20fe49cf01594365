"""Diffusion.Info as SubmitJob reads it: fresh answers from memory, out-of-date ones refreshed without holding
submits up, and the answer stored in KV standing in while no worker runs."""

from __future__ import annotations

import asyncio
import time

import pytest

from multipass import names
from multipass.bus import KvEntry
from multipass.errors import Unavailable
from multipass.v1 import diffusion_pb2
from multipass_gateway.infra.diffusion_info import DiffusionInfo


def answer(*models: str) -> diffusion_pb2.InfoResponse:
    return diffusion_pb2.InfoResponse(
        models=list(models),
        model_families={model: "sd15" for model in models},
        capabilities=["pass:base", "pass:person"],
    )


class Workers:
    """The diffusion workers as ``Diffusion.Info`` reaches them: answering, refusing, or stalled."""

    def __init__(self, reply: diffusion_pb2.InfoResponse | None = None):
        self.reply = reply
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.stall: asyncio.Event | None = None

    async def ask(self) -> diffusion_pb2.InfoResponse:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.stall is not None:
                await self.stall.wait()
            if self.reply is None:
                raise Unavailable("diffusion at 127.0.0.1:1 unavailable: connection refused")
            return self.reply
        finally:
            self.in_flight -= 1


class MemoryKv:
    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.puts = 0

    async def get(self, key: str) -> KvEntry | None:
        return KvEntry(key, self.data[key], 1) if key in self.data else None

    async def put(self, key: str, value: bytes) -> int:
        self.puts += 1
        self.data[key] = value
        return self.puts


async def test_a_fresh_answer_is_used_without_asking_again():
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=60.0)
    first = await info.get()
    again = await info.get()
    assert list(first.models) == list(again.models) == ["tiny-sd15"]
    assert workers.calls == 1


async def test_replicas_starting_together_share_one_question():
    workers = Workers(answer("tiny-sd15"))
    workers.stall = asyncio.Event()
    info = DiffusionInfo(workers.ask, ttl=60.0)
    waiting = [asyncio.ensure_future(info.get()) for _ in range(8)]
    await asyncio.sleep(0.05)
    workers.stall.set()
    answers = await asyncio.gather(*waiting)
    assert {tuple(a.models) for a in answers} == {("tiny-sd15",)}
    assert workers.calls == 1 and workers.most_in_flight == 1


async def test_stalled_workers_do_not_hold_submits_up_one_after_the_other():
    """An out-of-date answer with every worker stalled: one refresh runs; the submits meanwhile wait at most
    ``wait_seconds`` once, then use the old answer at once (before: each waited the RPC's full deadline)."""
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=0.05, wait_seconds=0.2, retry_seconds=30.0)
    await info.get()
    await asyncio.sleep(0.1)  # out of date now
    workers.stall = asyncio.Event()
    started = time.monotonic()
    answers = await asyncio.gather(*(info.get() for _ in range(20)))
    first_wave = time.monotonic() - started
    started = time.monotonic()
    later = [await info.get() for _ in range(20)]
    second_wave = time.monotonic() - started
    assert all(list(a.models) == ["tiny-sd15"] for a in [*answers, *later])
    assert first_wave < 1.0, f"20 submits took {first_wave:.2f} s with a stalled worker"
    assert second_wave < 0.5, f"20 more submits took {second_wave:.2f} s; they should not wait at all"
    assert workers.calls == 2 and workers.most_in_flight == 1  # the start, then one refresh still stalled
    workers.stall.set()
    await asyncio.sleep(0)


async def test_after_a_failed_refresh_the_old_answer_is_used_until_the_retry():
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=0.01, retry_seconds=0.3)
    await info.get()
    workers.reply = None  # the workers went away
    await asyncio.sleep(0.02)
    assert list((await info.get()).models) == ["tiny-sd15"]
    calls = workers.calls
    for _ in range(10):
        await info.get()
    assert workers.calls == calls  # not asked again within retry_seconds
    await asyncio.sleep(0.35)
    workers.reply = answer("tiny-sd15", "tiny-sdxl")
    assert list((await info.get()).models) == [
        "tiny-sd15",
        "tiny-sdxl",
    ]  # asked again, and the new answer used


async def test_an_answer_is_stored_once_and_read_back_when_no_worker_runs():
    kv = MemoryKv()
    workers = Workers(answer("tiny-sd15"))
    running = DiffusionInfo(workers.ask, ttl=0.0, store=kv)
    await running.get()
    await running.get()
    assert kv.puts == 1  # the same answer is not written again
    workers.reply = None  # scaled to zero
    fresh_replica = DiffusionInfo(workers.ask, ttl=30.0, store=kv)
    stored = await fresh_replica.get()
    assert list(stored.models) == ["tiny-sd15"]
    assert list(stored.capabilities) == ["pass:base", "pass:person"]


async def test_a_changed_answer_replaces_the_stored_one():
    kv = MemoryKv()
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=0.0, store=kv)
    await info.get()
    workers.reply = answer("tiny-sd15", "tiny-sdxl")
    await info.get()
    stored = diffusion_pb2.InfoResponse.FromString(kv.data[names.DIFFUSION_INFO_KEY])
    assert list(stored.models) == ["tiny-sd15", "tiny-sdxl"] and kv.puts == 2


async def test_with_no_worker_and_nothing_stored_it_is_unavailable():
    info = DiffusionInfo(Workers(None).ask, ttl=30.0, store=MemoryKv())
    with pytest.raises(Unavailable, match="no diffusion worker answered Diffusion.Info"):
        await info.get()


async def test_a_damaged_stored_answer_is_ignored():
    kv = MemoryKv()
    kv.data[names.DIFFUSION_INFO_KEY] = b"\xff\xff not a protobuf"
    info = DiffusionInfo(Workers(None).ask, ttl=30.0, store=kv)
    with pytest.raises(Unavailable):
        await info.get()


async def test_the_background_refresh_keeps_the_answer_fresh_and_stored():
    kv = MemoryKv()
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=2.0, store=kv)
    stop = asyncio.Event()
    task = asyncio.ensure_future(info.run(stop))
    await asyncio.sleep(0.05)
    assert names.DIFFUSION_INFO_KEY in kv.data  # stored before any submit asked
    calls = workers.calls
    await info.get()
    assert workers.calls == calls  # the submit found a fresh answer
    stop.set()
    await asyncio.wait_for(task, 2.0)


async def test_an_unchanged_answer_is_stored_again_after_a_while(monkeypatch):
    """Someone removed the stored answer: the next refresh after RESTORE_SECONDS puts it back."""
    from multipass_gateway.infra import diffusion_info

    monkeypatch.setattr(diffusion_info, "RESTORE_SECONDS", 0.05)
    kv = MemoryKv()
    info = DiffusionInfo(Workers(answer("tiny-sd15")).ask, ttl=0.0, store=kv)
    await info.get()
    del kv.data[names.DIFFUSION_INFO_KEY]
    await info.get()
    assert names.DIFFUSION_INFO_KEY not in kv.data  # unchanged, written a moment ago
    await asyncio.sleep(0.06)
    await info.get()
    assert names.DIFFUSION_INFO_KEY in kv.data and kv.puts == 2


async def test_an_answer_listing_no_model_is_not_taken():
    """A worker answers Info while it still loads its models: that empty answer is neither used, kept nor
    stored; the next call asks again and gets the real one."""
    kv = MemoryKv()
    workers = Workers(answer())
    info = DiffusionInfo(workers.ask, ttl=60.0, store=kv)
    with pytest.raises(Unavailable, match="serves no model yet"):
        await info.get()
    assert not kv.data
    workers.reply = answer("tiny-sd15")
    assert list((await info.get()).models) == ["tiny-sd15"]


async def test_an_answer_listing_no_model_leaves_the_last_one_in_use():
    workers = Workers(answer("tiny-sd15"))
    info = DiffusionInfo(workers.ask, ttl=0.0, retry_seconds=30.0)
    await info.get()
    workers.reply = answer()  # restarted, loading
    assert list((await info.get()).models) == ["tiny-sd15"]
