"""Revocation reaches open streams and peer replicas: the note ``- key.<digest>`` drops a peer's cached trust
and ends its streams at once; a lost note is made up for by the recheck, one KV read per distinct key."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from test_auth_cache import Clock, FakeKV

from multipass.errors import Unauthenticated
from multipass_gateway.domain import api_keys
from multipass_gateway.infra.key_streams import KeyStreams
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.settings import GatewaySettings


class LinkedNotes:
    """Replica notes between in-memory replicas: a note reaches every other replica's listeners at once."""

    def __init__(self, peers: list[LinkedNotes]):
        self._peers = peers
        self._listeners = []
        peers.append(self)

    def listen(self, listener) -> None:
        self._listeners.append(listener)

    def written(self, key: str, value: str = "") -> None:
        self._deliver("+", key, value)

    def removed(self, key_or_pattern: str) -> None:
        self._deliver("-", key_or_pattern, "")

    def _deliver(self, op: str, key: str, value: str) -> None:
        for peer in self._peers:
            if peer is not self:
                for listener in peer._listeners:
                    listener(op, key, value)


def linked_replicas(ttl: float = 30.0):
    store, clock, peers = FakeKV(), Clock(), []
    first = TenantStore(store, "pepper", cache_seconds=ttl, clock=clock, notes=LinkedNotes(peers))
    second = TenantStore(store, "pepper", cache_seconds=ttl, clock=clock, notes=LinkedNotes(peers))
    return store, first, second


async def test_a_peer_revocation_note_drops_the_cached_key_at_once():
    _store, first, second = linked_replicas(ttl=30.0)
    issued = await first.create_tenant("acme")
    assert await first.authenticate(issued.api_key) == issued.tenant  # now cached for 30 s
    assert await second.revoke(issued.key_id) is True
    with pytest.raises(Unauthenticated):
        await first.authenticate(issued.api_key)


async def test_revocation_ends_the_streams_of_that_key_on_every_replica_and_no_others():
    _store, first, second = linked_replicas()
    issued = await first.create_tenant("acme")
    other = await first.create_key(issued.tenant)
    key = await first.authenticate_key(issued.api_key)
    other_key = await second.authenticate_key(other.api_key)
    with (
        first.hold_stream(key) as here,
        second.hold_stream(key) as there,
        second.hold_stream(other_key) as kept,
    ):
        assert first.streams.open_count(key.digest) == 1
        await first.revoke(issued.key_id)
        assert here.is_set() and there.is_set()
        assert not kept.is_set()
    assert first.streams.open_count() == 0 and second.streams.open_count() == 0


async def test_the_recheck_ends_streams_of_keys_revoked_without_a_note_with_one_read_per_key():
    store = FakeKV()
    replica = TenantStore(store, "pepper", cache_seconds=30.0)
    silent = TenantStore(store, "pepper")  # revokes and tells nobody (a lost note)
    revoked_key = await replica.create_tenant("acme")
    live_key = await replica.create_tenant("globex")
    gone = await replica.authenticate_key(revoked_key.api_key)
    live = await replica.authenticate_key(live_key.api_key)
    await silent.revoke(revoked_key.key_id)
    with contextlib.ExitStack() as held:
        live_event = held.enter_context(replica.hold_stream(live))
        events = [held.enter_context(replica.hold_stream(gone)) for _ in range(50)]
        store.reads = 0
        assert await replica.streams.recheck() == 50
        assert store.reads == 2  # one per distinct key, however many streams it has
        assert all(event.is_set() for event in events) and not live_event.is_set()


async def test_the_recheck_loop_runs_every_interval_until_stopped():
    live = {"d1": True}
    reads: list[str] = []

    async def is_live(digest: str) -> bool:
        reads.append(digest)
        return live[digest]

    streams = KeyStreams(is_live, recheck_seconds=0.05)
    stop = asyncio.Event()
    with streams.hold("d1") as revoked:
        runner = asyncio.create_task(streams.run(stop))
        await asyncio.sleep(0.12)
        assert reads and not revoked.is_set()
        live["d1"] = False
        await asyncio.wait_for(revoked.wait(), 1.0)
    stop.set()
    await asyncio.wait_for(runner, 1.0)


async def test_a_stream_without_a_held_key_costs_no_read():
    reads: list[str] = []

    async def is_live(digest: str) -> bool:
        reads.append(digest)
        return True

    streams = KeyStreams(is_live, recheck_seconds=1.0)
    with streams.hold("d1"):
        pass
    assert await streams.recheck() == 0 and reads == []


def test_a_revocation_is_noted_as_the_removal_of_the_key_lookup_entry():
    peers: list[LinkedNotes] = []
    heard: list[tuple[str, str]] = []
    sender, listener = LinkedNotes(peers), LinkedNotes(peers)
    listener.listen(lambda op, key, _value: heard.append((op, key)))
    replica = TenantStore(FakeKV(), "pepper", notes=sender)
    issued = asyncio.run(replica.create_tenant("acme"))
    asyncio.run(replica.revoke(issued.key_id))
    assert heard == [("-", f"key.{api_keys.hash_key(issued.api_key, 'pepper')}")]


def test_the_stream_recheck_setting_defaults_to_two_seconds():
    assert GatewaySettings.from_env({}).stream_auth_recheck_seconds == 2.0
    env = {"MULTIPASS_GATEWAY_STREAM_AUTH_RECHECK_SECONDS": "0.5"}
    assert GatewaySettings.from_env(env).stream_auth_recheck_seconds == 0.5


def test_a_tenant_holds_at_most_its_bound_of_streams_and_a_closed_one_frees_its_place():
    from multipass.errors import ResourceExhausted

    async def live(_digest: str) -> bool:
        return True

    streams = KeyStreams(live, 1.0, max_per_tenant=2)
    with streams.hold("k1", "acme"), streams.hold("k2", "acme"):
        with (
            pytest.raises(ResourceExhausted, match="MULTIPASS_GATEWAY_TENANT_MAX_STREAMS"),
            streams.hold("k1", "acme"),
        ):
            pass
        assert streams.open_count() == 2  # the refused one holds nothing
        with streams.hold("k3", "other"):  # another tenant has its own bound
            assert streams.open_count() == 3
    with streams.hold("k1", "acme"), streams.hold("k1", "acme"):
        assert streams.open_count("k1") == 2
    assert streams.open_count() == 0
    unbounded = KeyStreams(live, 1.0)
    with contextlib.ExitStack() as held:
        for _ in range(50):
            held.enter_context(unbounded.hold("k", "acme"))
        assert unbounded.open_count() == 50
