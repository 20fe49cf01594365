"""A pass that nothing waits before is released by ``enqueue`` itself: no ready entry, the same flight marker."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from multipass.bus import KeyExists, PublishAck
from multipass.v1 import diffusion_pb2, events_pb2
from multipass_gateway.domain.scheduling import PassKey
from multipass_gateway.infra.pass_scheduler import PassScheduler
from multipass_gateway.infra.tenant_limits import TenantLimitsCache


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


class TenantsKv:
    """``tenant.<id>`` records with their own limits, as ``Admin.SetTenantLimits`` writes them."""

    def __init__(self, limits: dict[str, int]):
        self.records = {
            f"tenant.{tenant}": json.dumps({"limits": {"max_passes_in_flight": n}}).encode()
            for tenant, n in limits.items()
        }
        self.reads = 0

    async def get(self, key: str):
        self.reads += 1
        value = self.records.get(key)
        return SimpleNamespace(value=value) if value is not None else None


async def test_a_tenants_own_in_flight_limit_holds_in_direct_releases_and_in_rounds():
    tenants = TenantsKv({"a": 1, "c": 3})
    own = TenantLimitsCache(tenants, ttl=60)
    made, bus, kv = scheduler(tenant_limit=2, global_limit=10, own_limits=own)
    await own.get("a")  # the submit read it (the pending-work check)
    await made.enqueue("a", request("a", "j1"))
    await made.enqueue("a", request("a", "j2"))  # "a" may have 1 in flight, not the setting's 2
    assert [msg_id for _, msg_id in bus.published] == ["j1:base:1"]
    assert key("a", "j2") in made.mirror.ready
    # "c" may have 3 in flight, more than the setting: a round reads its limit and releases 3 of 4.
    for job in ("k1", "k2", "k3", "k4"):
        await made.enqueue("c", request("c", job))
    await made.release_once()
    released = [msg_id for _, msg_id in bus.published]
    assert sum(1 for m in released if m.startswith("k")) == 3 and "j2:base:1" not in released
    # A tenant without a record of its own keeps the setting.
    assert made._limit_known("b") == 2 and made._limit_known("c") == 3
    reads = tenants.reads
    await made.release_once()
    assert tenants.reads == reads  # within the cache time no read


def gauge(name: str, tenant: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"tenant": tenant})


async def test_each_tenants_waiting_and_in_flight_passes_are_exported_then_dropped():
    made, _bus, _kv = scheduler(tenant_limit=1, global_limit=10, tenant_metrics=True)
    await made.enqueue("ga", request("ga", "j1"))
    await made.enqueue("ga", request("ga", "j2"))  # waits: "ga" has its one slot taken
    await made.release_once()
    assert gauge("multipass_tenant_passes_in_flight", "ga") == 1
    assert gauge("multipass_tenant_passes_ready", "ga") == 1
    await made.done(key("ga", "j1"))
    await made.release_once()  # j2 takes the slot
    assert gauge("multipass_tenant_passes_ready", "ga") == 0
    await made.done(key("ga", "j2"))
    await made.release_once()
    assert gauge("multipass_tenant_passes_in_flight", "ga") is None  # nothing left: the series goes
    quiet, _, _ = scheduler(tenant_limit=1, global_limit=10)  # MULTIPASS_GATEWAY_TENANT_METRICS=false
    await quiet.enqueue("gb", request("gb", "k1"))
    await quiet.release_once()
    assert gauge("multipass_tenant_passes_in_flight", "gb") is None
