"""KV listings against a real nats-server: complete, and never stalled by keys purged meanwhile."""

from __future__ import annotations

import asyncio
import time

from multipass import subjects
from multipass_gateway import kv


async def jobs_kv(bus):
    await bus.ensure_topology()
    return await bus.kv(subjects.KV_JOBS)


async def test_listings_show_live_keys_only(bus):
    store = await jobs_kv(bus)
    for index in range(5):
        await store.put(f"sched.ready.t.j{index}.0.base.1", f"v{index}".encode())
    await store.put("active.t.j9", b"3")
    await kv.remove(store, "sched.ready.t.j1.0.base.1")
    await kv.remove(store, "sched.*.t.j2.0.base.1")  # one pattern for ready and flight of a pass
    expected = [f"sched.ready.t.j{index}.0.base.1" for index in (0, 3, 4)]
    assert await kv.purged_keys(store, "sched.>") == expected
    assert await kv.keys(store, "sched.>") == expected
    assert await kv.entries(store, "sched.ready.t.j3.>") == [("sched.ready.t.j3.0.base.1", b"v3")]
    assert await kv.purged_keys(store, "nothing.>") == [] and await kv.entries(store, "nothing.>") == []


async def test_a_listing_while_keys_are_purged_ends_promptly_with_what_is_left(bus):
    store = await jobs_kv(bus)
    names = [f"sched.flight.t.j{index:03d}.0.base.1" for index in range(300)]
    await asyncio.gather(*(store.put(name, b"1") for name in names))

    async def purge_half():
        for name in names[::2]:
            await kv.remove(store, name)

    started = time.monotonic()
    listed, _ = await asyncio.gather(kv.entries(store, "sched.flight.>"), purge_half())
    assert time.monotonic() - started < kv.LIST_DEADLINE_SECONDS
    listed_keys = {key for key, _ in listed}
    assert set(names[1::2]) <= listed_keys <= set(names)
    assert await kv.keys(store, "sched.flight.>") == sorted(names[1::2])
