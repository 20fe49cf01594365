"""The scheduler's in-memory mirror of its KV queues: own changes, peers' notes and resyncs from KV."""

from __future__ import annotations

import asyncio

from multipass.v1 import diffusion_pb2, events_pb2
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.queue_mirror import QueueMirror


def key(tenant: str, job: str, image: int = 0, name: str = "base", attempt: int = 1) -> PassKey:
    return PassKey(tenant, job, image, name, attempt)


def add_ready(mirror: QueueMirror, pass_key: PassKey, value: bytes | None, *, foreign: bool = False) -> None:
    mirror.put(pass_key.ready_key, value, own=not foreign)


def add_flight(mirror: QueueMirror, pass_key: PassKey) -> None:
    mirror.put(pass_key.flight_key)


class HeldListing:
    """A KV bucket whose listing returns ``keys`` once ``release`` is set (to interleave changes)."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.release = asyncio.Event()

    async def purged_keys(self, pattern: str) -> list[str]:
        await self.release.wait()
        return list(self.keys)


async def resync_with_changes(mirror: QueueMirror, store: HeldListing, changes) -> None:
    """Resync ``mirror`` from ``store``, calling ``changes()`` while the listing is under way."""
    resyncing = asyncio.create_task(mirror.resync())
    await asyncio.sleep(0)
    changes()
    store.release.set()
    await resyncing


def test_ready_entries_queue_per_tenant_in_order_and_released_ones_count_in_flight():
    mirror = QueueMirror(None)
    add_ready(mirror, key("b", "j2"), b"x")
    add_ready(mirror, key("a", "j9"), b"x")
    add_ready(mirror, key("a", "j1"), b"x")
    add_ready(mirror, key("a", "j0"), b"x")
    add_flight(mirror, key("a", "j0"))  # released: its ready entry stays until the pass ends
    ready, flight = mirror.queues(orphan_after=10.0)
    assert ready == {"a": [key("a", "j1"), key("a", "j9")], "b": [key("b", "j2")]}
    assert flight == [key("a", "j0")] and mirror.waiting() == 3


def test_one_removal_pattern_takes_a_pass_or_a_whole_job():
    mirror = QueueMirror(None)
    for job in ("j1", "j2"):
        for image in (0, 1):
            add_ready(mirror, key("a", job, image), b"x")
            add_flight(mirror, key("a", job, image))
    mirror.remove(f"sched.*.{key('a', 'j1', 1).suffix}")
    assert key("a", "j1", 1) not in mirror.ready and key("a", "j1", 1) not in mirror.flight
    mirror.remove("sched.*.a.j2.>")
    assert set(mirror.ready) == set(mirror.flight) == {key("a", "j1", 0)}
    mirror.remove(key("a", "j1", 0).flight_key)
    assert set(mirror.ready) == {key("a", "j1", 0)} and not mirror.flight


def test_entries_a_peer_announced_wait_for_that_peer_until_they_are_orphans():
    mirror = QueueMirror(None)
    add_ready(mirror, key("a", "j1"), None, foreign=True)
    assert mirror.queues(orphan_after=10.0)[0] == {}
    assert mirror.queues(orphan_after=0.0)[0] == {"a": [key("a", "j1")]}


async def test_a_resync_takes_the_listing_and_keeps_changes_made_while_listing():
    store = HeldListing(
        [
            "sched.ready.a.j1.0.base.1",
            "sched.ready.a.j2.0.base.1",  # written by a replica whose note was lost
            "sched.flight.a.j4.0.base.1",
            "sched.flight.a.j5.0.base.1",
            "active.a.j1",
            "sched.ready.not-a-pass",
        ]
    )
    mirror = QueueMirror(store)  # type: ignore[arg-type]
    add_ready(mirror, key("a", "j1"), b"value")
    add_ready(mirror, key("a", "gone"), b"x")  # removed in KV by someone the mirror did not hear

    def meanwhile():
        add_ready(mirror, key("a", "j3"), b"new")  # written while the listing ran, after it read that prefix
        mirror.remove(key("a", "j4").flight_key)  # a pass ended while listing; the listing still had it

    await resync_with_changes(mirror, store, meanwhile)
    assert mirror.ready == {key("a", "j1"): b"value", key("a", "j2"): None, key("a", "j3"): b"new"}
    assert mirror.flight == {key("a", "j5")}


async def test_a_resync_keeps_releases_in_progress_in_flight_and_replays_job_removals():
    store = HeldListing(
        ["sched.ready.a.j1.0.base.1", "sched.ready.a.j2.0.base.1", "sched.flight.a.j2.1.base.1"]
    )
    mirror = QueueMirror(store)  # type: ignore[arg-type]
    mirror.releasing.add(key("a", "j1"))
    await resync_with_changes(mirror, store, lambda: mirror.remove("sched.*.a.j2.>"))
    assert mirror.flight == {key("a", "j1")} and set(mirror.ready) == {key("a", "j1")}
    assert mirror.queues(orphan_after=10.0)[0] == {}  # its release is under way: not released again


def test_peer_notes_update_the_mirror_and_wake_the_releaser():
    scheduler = PassScheduler(None, None, tenant_limit=2, global_limit=4)  # type: ignore[arg-type]
    scheduler.mirror.on_note("+", "sched.ready.a.j1.0.base.1", "")
    scheduler.mirror.on_note("+", "sched.flight.a.j0.0.base.1", "")
    assert scheduler.mirror.foreign.keys() == {key("a", "j1")}
    assert scheduler.mirror.flight == {key("a", "j0")}
    assert not scheduler._wake.is_set()
    scheduler.mirror.on_note("-", f"sched.*.{key('a', 'j0').suffix}", "")
    assert scheduler.mirror.flight == set() and scheduler._wake.is_set()
    scheduler.mirror.on_note("-", "sched.*.a.j1.>", "")
    assert scheduler.mirror.ready == {}
    scheduler.mirror.on_note("+", "active.a.j1", "3")  # not a scheduler marker
    scheduler.mirror.on_note("+", "sched.ready.bad", "")
    assert scheduler.mirror.ready == {} and scheduler.mirror.flight == set()


def test_a_flight_note_arriving_after_the_pass_ended_is_ignored():
    scheduler = PassScheduler(None, None, tenant_limit=2, global_limit=4)  # type: ignore[arg-type]
    scheduler.mirror.on_note("-", f"sched.*.{key('a', 'j0').suffix}", "")  # ended (seen by a peer)
    scheduler.mirror.on_note("+", key("a", "j0").flight_key, "")  # the releaser's note, overtaken
    assert scheduler.mirror.flight == set()


class FakeScheduler(PassScheduler):
    """Release rounds against the mirror only: publishing and KV writes are recorded, not sent."""

    def __init__(self, **limits):
        super().__init__(None, None, **limits)  # type: ignore[arg-type]
        self.released: list[PassKey] = []
        self.purged: list[str] = []
        self.mirror.synced_at = float("inf")  # never resync from KV
        self.hold: asyncio.Event | None = None

    async def _release(self, key: PassKey) -> bool:
        if self.hold is not None:
            await self.hold.wait()
        self.released.append(key)
        if key in self._ended_while_releasing:
            self._ended_while_releasing.discard(key)
            await self._purge(f"sched.*.{key.suffix}")
        return True

    async def _purge(self, key_pattern: str) -> None:
        self.purged.append(key_pattern)
        self.mirror.remove(key_pattern)


async def test_rounds_release_within_bounds_round_robin_and_free_slots_when_passes_end():
    scheduler = FakeScheduler(tenant_limit=2, global_limit=3)
    for index in range(4):
        add_ready(scheduler.mirror, key("many", f"j{index}"), b"x")
    add_ready(scheduler.mirror, key("one", "k0"), b"x")
    assert await scheduler.release_once() == 3
    assert scheduler.released == [key("many", "j0"), key("one", "k0"), key("many", "j1")]
    assert await scheduler.release_once() == 0  # every slot taken
    await scheduler.done(key("one", "k0"))
    assert await scheduler.release_once() == 0  # "many" is at its own bound
    await scheduler.done(key("many", "j0"))
    assert await scheduler.release_once() == 1 and scheduler.released[-1] == key("many", "j2")
    assert scheduler.mirror.flight == {key("many", "j1"), key("many", "j2")}
    assert scheduler.purged == [f"sched.*.{key('one', 'k0').suffix}", f"sched.*.{key('many', 'j0').suffix}"]


async def test_a_pass_that_ends_while_its_release_is_writing_loses_its_marker_again():
    scheduler = FakeScheduler(tenant_limit=2, global_limit=3)
    add_ready(scheduler.mirror, key("a", "j1"), b"x")
    scheduler.hold = asyncio.Event()
    releasing = asyncio.create_task(scheduler.release_once())
    await asyncio.sleep(0)
    await scheduler.done(key("a", "j1"))  # the worker was quicker than the flight marker
    scheduler.hold.set()
    assert await releasing == 1
    assert scheduler.purged == [f"sched.*.{key('a', 'j1').suffix}"] * 2
    assert scheduler.mirror.flight == set() and scheduler.mirror.ready == {}


async def test_a_failed_release_leaves_its_slot_free_and_its_entry_ready():
    scheduler = FakeScheduler(tenant_limit=2, global_limit=3)
    add_ready(scheduler.mirror, key("a", "j1"), b"x")

    async def refuse(_key):
        return False

    scheduler._release = refuse
    assert await scheduler.release_once() == 0
    assert scheduler.mirror.flight == set() and key("a", "j1") in scheduler.mirror.ready


def test_a_pass_queued_here_and_by_a_peer_stays_releasable_here():
    mirror = QueueMirror(None)
    add_ready(mirror, key("a", "j1"), b"x")  # this replica flushed the outbox
    add_ready(mirror, key("a", "j1"), None, foreign=True)  # so did a peer, whose note came later
    assert mirror.queues(orphan_after=10.0)[0] == {"a": [key("a", "j1")]}
    assert mirror.ready[key("a", "j1")] == b"x"


async def test_a_pass_that_ended_is_not_queued_again_by_a_late_outbox():
    scheduler = FakeScheduler(tenant_limit=2, global_limit=3)
    await scheduler.done(key("a", "j1"))
    request = events_pb2.OutboxRequest(
        request=diffusion_pb2.PassRequest(tenant="a", job_id="j1", image_index=0, pass_name="base", attempt=1)
    )
    await scheduler.enqueue("a", request)  # no KV store behind FakeScheduler: writing would fail
    assert scheduler.mirror.ready == {}
