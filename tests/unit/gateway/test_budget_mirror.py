"""The pending-work budget's mirror: checks read it, own writes and peers' notes change it, refreshes rebuild it."""

from __future__ import annotations

import asyncio

import pytest

from multipass.bus import KvEntry
from multipass.errors import FailedPrecondition, ResourceExhausted
from multipass_gateway.infra.pending_budget import PendingBudget
from multipass_gateway.settings import Limits


class MemoryKv:
    """The KV bucket operations the budget uses, over a dict; ``listing`` can be held to interleave writes."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.listings = 0
        self.reads = 0
        self.hold: asyncio.Event | None = None

    async def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        return len(self.data)

    async def entries(self, pattern: str, *, values: bool = True) -> list[tuple[str, bytes]]:
        self.listings += 1
        snapshot = sorted((k, v) for k, v in self.data.items() if k.startswith(pattern.removesuffix(">")))
        if self.hold is not None:
            await self.hold.wait()
        return snapshot

    async def purged_keys(self, pattern: str) -> list[str]:
        return [key for key, _ in await self.entries(pattern)]

    async def get(self, key: str) -> KvEntry | None:
        self.reads += 1
        return KvEntry(key, self.data[key], 1) if key in self.data else None

    async def remove(self, pattern: str) -> None:
        self.data.pop(pattern, None)


@pytest.fixture
def store() -> MemoryKv:
    return MemoryKv()


LIMITS = Limits(tenant_max_pending_passes=5, global_max_pending_passes=8, retry_after_seconds=3.0)


async def test_checks_count_markers_without_listing_each_time(store):
    store.data["active.a.old"] = b"2"  # left by an earlier process
    budget = PendingBudget(store, LIMITS)  # type: ignore[arg-type]
    await budget.check("a", 3)
    await budget.add("a", "j1", 3)
    with pytest.raises(ResourceExhausted, match="for this tenant"):
        await budget.check("a", 1)
    await budget.add("b", "j2", 3)
    with pytest.raises(ResourceExhausted, match="pending-work limit"):
        await budget.check("c", 1)
    await budget.remove("a", "j1")
    await budget.check("c", 1)
    assert budget.pending("a") == (2, 5)
    assert store.listings == 1  # the first check loaded the mirror; the rest read it


async def test_a_job_larger_than_a_whole_limit_is_refused_without_a_retry_hint(store):
    """No wait makes room for it: FAILED_PRECONDITION naming the cost and the limit, not a retry."""
    budget = PendingBudget(store, LIMITS)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition) as caught:
        await budget.check("a", 6)
    assert "this job alone needs 6 passes, more than this tenant's limit of 5" in str(caught.value)
    assert caught.value.metadata == {"scope": "tenant", "limit": "5", "cost": "6"}
    with pytest.raises(FailedPrecondition, match="the service's limit of 8"):
        await budget.check("a", 9, tenant_limit=20)
    await budget.check("a", 5)  # exactly the limit still fits an idle tenant


async def test_peers_notes_count_at_once(store):
    budget = PendingBudget(store, LIMITS)  # type: ignore[arg-type]
    await budget.refresh()
    budget.mirror.on_note("+", "active.a.peer", "4")
    budget.mirror.on_note("+", "sched.ready.a.x.0.base.1", "")  # not a budget marker
    assert budget.pending("a") == (4, 4)
    budget.mirror.on_note("+", "active.a.peer", "1")  # rewritten: counted once
    assert budget.pending("a") == (1, 1)
    budget.mirror.on_note("-", "active.a.peer", "")
    assert budget.pending("a") == (0, 0)


async def test_a_refresh_keeps_writes_made_while_it_listed(store):
    budget = PendingBudget(store, LIMITS)  # type: ignore[arg-type]
    await budget.refresh()
    store.data["active.a.silent"] = b"1"  # written by a peer whose note was lost
    store.data["active.a.known"] = b"4"
    await budget.add("a", "known", 4)
    store.hold = asyncio.Event()
    refreshing = asyncio.create_task(budget.refresh())
    await asyncio.sleep(0)
    await budget.add("a", "new", 2)  # after the listing's snapshot
    await budget.remove("a", "known")  # likewise: the listing still has it
    store.hold.set()
    await refreshing
    assert budget.pending("a") == (3, 3)  # silent 1 + new 2
    reads = store.reads
    await budget.refresh()
    assert budget.pending("a") == (3, 3)
    assert store.reads == reads  # known markers' costs are not read again


async def test_the_periodic_refresh_picks_up_markers_nobody_announced(store):
    budget = PendingBudget(store, LIMITS, refresh_interval=0.01)  # type: ignore[arg-type]
    stop = asyncio.Event()
    runner = asyncio.create_task(budget.run(stop))
    await asyncio.sleep(0.02)
    store.data["active.a.silent"] = b"5"
    for _ in range(100):
        if budget.pending("a") == (5, 5):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await runner
    assert budget.pending("a") == (5, 5)


async def test_a_first_check_during_the_periodic_refresh_shares_its_listing(store):
    """A replica's first submit while its refresh loop lists (both at start): one listing, both go on (two
    at once used to take each other's replay of changes and fail the submit with a TypeError)."""
    store.data["active.a.old"] = b"2"
    budget = PendingBudget(store, LIMITS)  # type: ignore[arg-type]
    store.hold = asyncio.Event()
    refreshing = asyncio.create_task(budget.refresh())
    await asyncio.sleep(0)
    checking = asyncio.create_task(budget.check("a", 2))
    await asyncio.sleep(0)
    await budget.add("a", "j1", 1)  # written while the listing is held
    store.hold.set()
    await asyncio.gather(refreshing, checking)
    assert store.listings == 1
    assert budget.pending("a") == (3, 3)
