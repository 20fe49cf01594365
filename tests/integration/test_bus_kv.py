"""KV buckets against a real nats-server: compare-and-set conflicts as our own errors, listings complete
and never stalled by keys purged meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from multipass import names
from multipass.bus import KeyExists, KvBucket, KvEntry, RevisionMismatch
from multipass.bus.kv import LIST_DEADLINE_SECONDS
from multipass.errors import InvalidInput


async def jobs_kv(bus) -> KvBucket:
    await bus.ensure_topology()
    return await bus.kv(names.KV_JOBS)


async def test_reads_writes_and_compare_and_set_conflicts(bus):
    store = await jobs_kv(bus)
    assert await store.get("J1") is None
    revision = await store.create("J1", b"queued")
    with pytest.raises(KeyExists):
        await store.create("J1", b"again")
    newer = await store.update("J1", b"running", revision=revision)
    with pytest.raises(RevisionMismatch):
        await store.update("J1", b"cancelled", revision=revision)
    assert await store.get("J1") == KvEntry("J1", b"running", newer)
    await store.delete("J1")
    assert await store.get("J1") is None
    recreated = await store.create("J1", b"new")  # a deleted key counts as absent
    assert (await store.get("J1")).revision == recreated
    assert await store.put("J2", b"x") > recreated
    with pytest.raises(InvalidInput):
        await store.get("bad key*")


async def test_listings_show_live_keys_only(bus):
    store = await jobs_kv(bus)
    for index in range(5):
        await store.put(f"sched.ready.t.j{index}.0.base.1", f"v{index}".encode())
    await store.put("active.t.j9", b"3")
    await store.remove("sched.ready.t.j1.0.base.1")
    await store.remove("sched.*.t.j2.0.base.1")  # one pattern for ready and flight of a pass
    expected = [f"sched.ready.t.j{index}.0.base.1" for index in (0, 3, 4)]
    assert await store.purged_keys("sched.>") == expected
    assert await store.keys("sched.>") == expected
    assert await store.entries("sched.ready.t.j3.>") == [("sched.ready.t.j3.0.base.1", b"v3")]
    assert await store.purged_keys("nothing.>") == [] and await store.entries("nothing.>") == []


async def test_a_listing_while_keys_are_purged_ends_promptly_with_what_is_left(bus):
    store = await jobs_kv(bus)
    keys = [f"sched.flight.t.j{index:03d}.0.base.1" for index in range(300)]
    await asyncio.gather(*(store.put(key, b"1") for key in keys))

    async def purge_half():
        for key in keys[::2]:
            await store.remove(key)

    started = time.monotonic()
    listed, _ = await asyncio.gather(store.entries("sched.flight.>"), purge_half())
    assert time.monotonic() - started < LIST_DEADLINE_SECONDS
    listed_keys = {key for key, _ in listed}
    assert set(keys[1::2]) <= listed_keys <= set(keys)
    assert await store.keys("sched.flight.>") == sorted(keys[1::2])


async def test_a_listing_carries_on_when_a_fetch_times_out_with_asyncios_own_error(bus, monkeypatch):
    """nats-py raises asyncio's TimeoutError (not its own) when its deadline runs out between its two pull
    requests; the listing treats it as "nothing came" and asks the stream, as for its own."""
    from nats.js.client import JetStreamContext

    store = await jobs_kv(bus)
    keys = [f"sched.flight.t.j{index:03d}.0.base.1" for index in range(5)]
    for key in keys:
        await store.put(key, b"1")
    real_fetch = JetStreamContext.PullSubscription.fetch
    calls = []

    async def first_fetch_times_out(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError
        return await real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", first_fetch_times_out)
    assert await store.keys("sched.flight.>") == keys
    assert len(calls) >= 2
