"""A pass that nothing waits before is released by ``enqueue`` itself: no ready entry, the same flight marker."""

from __future__ import annotations

import pytest

from multipass.bus import KeyExists, PublishAck
from multipass.v1 import diffusion_pb2, events_pb2
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.infra.pass_scheduler import PassScheduler


class RecordingBus:
    """Publishes like JetStream's dedupe: a msg id seen before is a duplicate of its first sequence."""

    def __init__(self):
        self.published: list[tuple[str, str]] = []
        self.sequences: dict[str, int] = {}

    async def publish(self, subject, message, *, msg_id, **_):
        self.published.append((subject, msg_id))
        duplicate = msg_id in self.sequences
        self.sequences.setdefault(msg_id, len(self.sequences) + 1)
        return PublishAck(stream="MULTIPASS_PASSES", seq=self.sequences[msg_id], duplicate=duplicate)


class RecordingKv:
    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.writes: list[str] = []

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyExists(key)
        self.writes.append(key)
        self.data[key] = value
        return len(self.writes)

    async def put(self, key: str, value: bytes) -> int:
        self.writes.append(key)
        self.data[key] = value
        return len(self.writes)

    async def remove(self, pattern: str) -> None:
        if pattern.startswith("sched.*."):
            suffix = pattern[len("sched.*.") :]
            for head in ("ready", "flight"):
                self.data.pop(f"sched.{head}.{suffix}", None)
        else:
            self.data.pop(pattern, None)


def request(tenant: str, job: str, name: str = "base") -> events_pb2.OutboxRequest:
    return events_pb2.OutboxRequest(
        subject="multipass.pass.diffusion.tiny",
        msg_id=f"{job}:{name}:1",
        request=diffusion_pb2.PassRequest(
            tenant=tenant, job_id=job, image_index=0, pass_name=name, attempt=1
        ),
    )


def scheduler(**limits) -> tuple[PassScheduler, RecordingBus, RecordingKv]:
    bus, kv = RecordingBus(), RecordingKv()
    made = PassScheduler(bus, kv, **limits)  # type: ignore[arg-type]
    made.mirror.synced_at = float("inf")  # current: never resync from KV
    return made, bus, kv


def key(tenant: str, job: str, name: str = "base") -> PassKey:
    return PassKey(tenant, job, 0, name, 1)


async def test_a_pass_with_room_is_published_at_once_with_its_flight_marker_and_no_ready_entry():
    made, bus, kv = scheduler(tenant_limit=2, global_limit=4)
    await made.enqueue("a", request("a", "j1"))
    assert bus.published == [("multipass.pass.diffusion.tiny", "j1:base:1")]
    assert kv.writes == [key("a", "j1").flight_key] and kv.data[key("a", "j1").flight_key] == b"1"
    assert made.mirror.flight == {key("a", "j1")} and made.mirror.ready == {}
    # The same attempt again (an outbox published twice) changes nothing.
    await made.enqueue("a", request("a", "j1"))
    assert len(bus.published) == 1 and len(kv.writes) == 1
    await made.done(key("a", "j1"))
    assert made.mirror.flight == set() and kv.data == {}


async def test_at_the_tenant_bound_passes_queue_and_later_ones_do_not_overtake_them():
    made, bus, kv = scheduler(tenant_limit=1, global_limit=4)
    await made.enqueue("a", request("a", "j1"))
    await made.enqueue("a", request("a", "j2"))  # "a" is at its bound: queued
    assert [msg_id for _, msg_id in bus.published] == ["j1:base:1"]
    assert key("a", "j2").ready_key in kv.data and key("a", "j2") in made.mirror.ready
    # Tenant "b" has room, but a pass waits: the fair rounds decide, so "b" queues too.
    await made.enqueue("b", request("b", "k1"))
    assert key("b", "k1") in made.mirror.ready and len(bus.published) == 1
    assert await made.release_once() == 1  # the round releases "b" ("a" is still at its bound)
    assert [msg_id for _, msg_id in bus.published] == ["j1:base:1", "k1:base:1"]


async def test_a_pass_published_before_writes_no_second_flight_marker():
    """Another replica published the pass and it ended there before this one heard: no marker outlives it."""
    made, bus, kv = scheduler(tenant_limit=2, global_limit=4)
    await bus.publish("multipass.pass.diffusion.tiny", b"", msg_id="j1:base:1")  # the other replica's release
    await made.enqueue("a", request("a", "j1"))  # this replica flushes the same outbox again
    assert kv.writes == [] and kv.data == {}
    # Queued rather than released at once (a pass waits): its ready entry goes once the publish is a duplicate.
    queued, bus, kv = scheduler(tenant_limit=1, global_limit=4)
    await queued.enqueue("a", request("a", "j0"))
    await bus.publish("multipass.pass.diffusion.tiny", b"", msg_id="j2:base:1")
    await queued.enqueue("a", request("a", "j2"))
    assert key("a", "j2").ready_key in kv.data
    await queued.done(key("a", "j0"))
    assert await queued.release_once() == 1
    assert key("a", "j2").ready_key not in kv.data and key("a", "j2").flight_key not in kv.data


async def test_at_the_global_bound_or_on_a_stale_mirror_passes_queue():
    made, bus, _kv = scheduler(tenant_limit=4, global_limit=1)
    await made.enqueue("a", request("a", "j1"))
    await made.enqueue("b", request("b", "k1"))
    assert len(bus.published) == 1 and key("b", "k1") in made.mirror.ready

    stale, bus, kv = scheduler(tenant_limit=4, global_limit=4)
    stale.mirror.synced_at = None  # never loaded: its picture of the flights is not to be trusted
    await stale.enqueue("a", request("a", "j1"))
    assert bus.published == [] and key("a", "j1").ready_key in kv.data


async def test_a_failed_publish_leaves_the_slot_free_and_raises_so_the_outbox_keeps_the_request():
    made, bus, kv = scheduler(tenant_limit=2, global_limit=4)

    async def refuse(*_args, **_kwargs):
        raise ConnectionError("down")

    bus.publish = refuse  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await made.enqueue("a", request("a", "j1"))
    assert made.mirror.flight == set() and made.mirror.releasing == set() and kv.data == {}
