"""The per-replica authentication cache: one KV read per key per TTL, revocation bounded by the TTL."""

from __future__ import annotations

import asyncio

import pytest

from multipass.bus import KeyExists, KvEntry
from multipass.errors import Unauthenticated
from multipass_gateway.infra.auth_cache import AuthCache
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.settings import GatewaySettings


class FakeKV:
    """The subset of a KV bucket (:class:`multipass.bus.KvBucket`) the tenant store uses, counting reads."""

    def __init__(self):
        self.data: dict[str, KvEntry] = {}
        self.reads = 0
        self._revision = 0

    async def get(self, key: str) -> KvEntry | None:
        self.reads += 1
        return self.data.get(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyExists(key)
        return await self.put(key, value)

    async def put(self, key: str, value: bytes) -> int:
        self._revision += 1
        self.data[key] = KvEntry(key, value, self._revision)
        return self._revision

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def replicas(ttl: float):
    """Two replicas' tenant stores over one bucket, on one fake clock."""
    store, clock = FakeKV(), Clock()
    first = TenantStore(store, "pepper", cache_seconds=ttl, clock=clock)
    second = TenantStore(store, "pepper", cache_seconds=ttl, clock=clock)
    return store, clock, first, second


def test_a_burst_of_calls_with_one_key_costs_one_read():
    store, _clock, first, _second = replicas(2.0)
    issued = run(first.create_tenant("acme"))
    store.reads = 0

    async def burst():
        return [await first.authenticate(issued.api_key) for _ in range(50)]

    assert set(run(burst())) == {issued.tenant}
    assert store.reads == 1


def test_the_key_is_read_again_once_the_ttl_passed():
    store, clock, first, _second = replicas(2.0)
    issued = run(first.create_tenant("acme"))
    store.reads = 0
    run(first.authenticate(issued.api_key))
    clock.now += 1.9
    run(first.authenticate(issued.api_key))
    assert store.reads == 1
    clock.now += 0.2
    run(first.authenticate(issued.api_key))
    assert store.reads == 2


def test_a_key_revoked_on_another_replica_stops_working_within_the_ttl():
    _store, clock, first, second = replicas(2.0)
    issued = run(first.create_tenant("acme"))
    assert run(first.authenticate(issued.api_key)) == issued.tenant
    assert run(second.revoke(issued.key_id)) is True
    # The revoking replica refuses at once; the other trusts its read until the TTL runs out.
    with pytest.raises(Unauthenticated):
        run(second.authenticate(issued.api_key))
    assert run(first.authenticate(issued.api_key)) == issued.tenant
    clock.now += 2.0
    with pytest.raises(Unauthenticated):
        run(first.authenticate(issued.api_key))


def test_a_key_revoked_on_the_same_replica_stops_working_at_once():
    _store, _clock, first, _second = replicas(2.0)
    issued = run(first.create_tenant("acme"))
    run(first.authenticate(issued.api_key))
    run(first.revoke(issued.key_id))
    with pytest.raises(Unauthenticated):
        run(first.authenticate(issued.api_key))


def test_with_ttl_zero_every_call_reads_and_revocation_is_immediate_everywhere():
    store, _clock, first, second = replicas(0.0)
    issued = run(first.create_tenant("acme"))
    store.reads = 0
    for _ in range(3):
        run(first.authenticate(issued.api_key))
    assert store.reads == 3
    run(second.revoke(issued.key_id))
    with pytest.raises(Unauthenticated):
        run(first.authenticate(issued.api_key))


def test_unknown_keys_are_not_remembered():
    store, _clock, first, _second = replicas(2.0)
    issued = run(first.create_tenant("acme"))
    other = issued.api_key[:-4] + ("aaaa" if not issued.api_key.endswith("aaaa") else "bbbb")
    store.reads = 0
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            run(first.authenticate(other))
    assert store.reads == 2


def test_a_rotated_key_works_and_the_old_one_stops_within_the_ttl():
    _store, clock, first, second = replicas(2.0)
    old = run(first.create_tenant("acme"))
    run(first.authenticate(old.api_key))
    new = run(second.create_key(old.tenant))
    run(second.revoke(old.key_id))
    assert run(first.authenticate(new.api_key)) == old.tenant
    clock.now += 2.0
    with pytest.raises(Unauthenticated):
        run(first.authenticate(old.api_key))
    assert run(first.authenticate(new.api_key)) == old.tenant


def test_the_cache_is_bounded():
    clock = Clock()
    cache = AuthCache(2.0, clock=clock, max_keys=3)
    for i in range(5):
        cache.put(f"hash-{i}", f"t{i}")
    assert [cache.get(f"hash-{i}") for i in range(5)] == [None, None, "t2", "t3", "t4"]


def test_the_ttl_setting_defaults_to_two_seconds_and_zero_turns_it_off():
    assert GatewaySettings.from_env({}).auth_cache_seconds == 2.0
    assert GatewaySettings.from_env({"MULTIPASS_GATEWAY_AUTH_CACHE_SECONDS": "0"}).auth_cache_seconds == 0.0
