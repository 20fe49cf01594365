"""Tenants and their API keys in KV bucket ``multipass-tenants``: issue, authenticate (through this replica's
:class:`~multipass_gateway.infra.auth_cache.AuthCache`), revoke, list, and forget a removed tenant.

The bucket's keys, and how long a revoked key may still work on another replica: docs/CONTRACTS.md
("Tenants and API keys"). A revocation is told to the other replicas as the note ``- key.<digest>``
(:mod:`multipass_gateway.infra.replica_notes`): they forget the key at once and end its open streams
(:mod:`multipass_gateway.infra.key_streams`); the cache TTL and the streams' recheck bound the delay
when a note is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from multipass.bus import KvBucket
from multipass.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Reason,
    Unauthenticated,
    Violation,
    echo,
)
from multipass_gateway.domain import api_keys, request_checks
from multipass_gateway.domain.page_tokens import page_token, parse_page_token
from multipass_gateway.infra import tenant_limits
from multipass_gateway.infra.auth_cache import AuthCache
from multipass_gateway.infra.key_streams import KeyStreams
from multipass_gateway.infra.replica_notes import ReplicaNotes
from multipass_gateway.infra.tenant_limits import TenantLimits, TenantLimitsCache

_TENANT_ID = re.compile(r"^t[0-9a-f]{16}$")


@dataclass(frozen=True)
class NewKey:
    tenant: str
    key_id: str
    api_key: str


@dataclass(frozen=True)
class TenantSummary:
    tenant: str
    name: str
    created_at: float
    live_keys: int
    limits: TenantLimits


@dataclass(frozen=True)
class KeySummary:
    key_id: str
    tenant: str
    #: None for keys recorded before issue and revocation times were.
    created_at: float | None
    revoked: bool
    revoked_at: float | None


@dataclass(frozen=True)
class AuthenticatedKey:
    """Who a call's API key belongs to, and the key's digest (what its revocation is known by)."""

    tenant: str
    digest: str


#: Prefix of the lookup entries ``key.<digest>``, and of the replica note of a revocation.
_LOOKUP_PREFIX = "key."
#: Seconds between the checks of the keys of open streams, when nothing is configured.
DEFAULT_STREAM_RECHECK_SECONDS = 2.0


def valid_tenant_id(tenant: str) -> bool:
    return bool(_TENANT_ID.match(tenant))


class TenantStore:
    def __init__(
        self,
        store: KvBucket,
        pepper: str = "",
        *,
        cache_seconds: float = 0.0,
        clock=time.monotonic,
        notes: ReplicaNotes | None = None,
        stream_recheck_seconds: float = DEFAULT_STREAM_RECHECK_SECONDS,
        tenant_max_streams: int = 0,
    ):
        self._kv = store
        self._pepper = pepper
        self._cache = AuthCache(cache_seconds, clock=clock)
        #: Each tenant's own quotas, read again after the same time as keys.
        self.limits = TenantLimitsCache(store, cache_seconds, clock=clock)
        self._notes = notes
        self.streams = KeyStreams(
            self._key_is_live, stream_recheck_seconds, max_per_tenant=tenant_max_streams
        )
        if notes is not None:
            notes.listen(self._on_note)

    async def create_tenant(self, name: str) -> NewKey:
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise InvalidInput.of(
                [Violation("name", f"got {echo(name)}; expected 1..100 printable characters")]
            )
        tenant = "t" + secrets.token_hex(8)
        record = {"tenant": tenant, "name": name, "created_at": time.time()}
        await self._kv.create(f"tenant.{tenant}", json.dumps(record).encode())
        return await self._issue(tenant)

    async def create_key(self, tenant: str) -> NewKey:
        """A new key of ``tenant``; NotFound for an unknown tenant, FAILED_PRECONDITION while it is being
        removed (a key made then would outlive the tenant)."""
        await self.require(tenant)
        found = await self._kv.get(f"tenant.{tenant}")
        if found is not None and json.loads(found.value).get("removing"):
            raise FailedPrecondition(
                f"tenant {tenant} is being removed; it takes no new keys",
                reason=Reason.UNKNOWN_TENANT,
                metadata={"tenant": tenant},
            )
        return await self._issue(tenant)

    async def mark_removing(self, tenant: str) -> None:
        """Record that ``tenant`` is being removed (``DeleteTenant``): it takes no new keys from now on."""

        def change(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            record = json.loads(current)
            if record.get("removing"):
                return None
            record["removing"] = True
            return json.dumps(record).encode()

        await self._kv.compare_and_set(f"tenant.{tenant}", change)

    async def require(self, tenant: str) -> None:
        """NotFound (``tenant``, ``UNKNOWN_TENANT``) unless the tenant exists; InvalidInput naming ``tenant``
        when it is empty or not a tenant id at all."""
        if not valid_tenant_id(tenant):
            described = (
                "is required (a tenant id from CreateTenant or ListTenants)"
                if not tenant
                else f"got {echo(tenant)}; expected a tenant id: 't' and 16 hex digits"
            )
            raise InvalidInput.of([Violation("tenant", described)])
        if await self._kv.get(f"tenant.{tenant}") is None:
            raise NotFound(
                f"tenant {echo(tenant)} does not exist",
                reason=Reason.UNKNOWN_TENANT,
                metadata={"tenant": tenant},
            )

    async def list_tenants(self, page_size: int, token: str) -> tuple[list[TenantSummary], str]:
        """A page of tenants, oldest first, and the token of the next page ("" after the last)."""
        problems = request_checks.page_size(page_size)
        if problems:
            raise InvalidInput.of(problems)
        size = page_size or request_checks.DEFAULT_PAGE_SIZE
        after = _parse_tenant_token(token)
        records = [json.loads(value) for _key, value in await self._kv.entries("tenant.*")]
        ordered = sorted((_tenant_order(r), r) for r in records)
        page = [record for order, record in ordered if after is None or order > after][: size + 1]
        more = len(page) > size
        page = page[:size]
        live: dict[str, int] = {}
        if page:
            for key in await self._keys():
                if not key.revoked:
                    live[key.tenant] = live.get(key.tenant, 0) + 1
        summaries = [_summary(r, live.get(r["tenant"], 0)) for r in page]
        return summaries, _tenant_token(_tenant_order(page[-1])) if more else ""

    async def set_limits(self, tenant: str, limits: TenantLimits) -> TenantSummary:
        """Replace the tenant's own quotas (InvalidInput naming ``limits.<field>`` out of range)."""
        problems = tenant_limits.check(limits)
        if problems:
            raise InvalidInput.of(problems)
        await self.require(tenant)

        def change(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            record = json.loads(current)
            record["limits"] = tenant_limits.to_record(limits)
            return json.dumps(record).encode()

        value, _revision = await self._kv.compare_and_set(f"tenant.{tenant}", change)
        if value is None:
            await self.require(tenant)  # removed meanwhile: NotFound
        self.limits.remember(tenant, tenant_limits.from_record(json.loads(value)))
        if self._notes is not None:  # the other replicas read the new limits on their next check
            self._notes.written(f"tenant.{tenant}")
        live = sum(1 for key in await self._keys() if key.tenant == tenant and not key.revoked)
        return _summary(json.loads(value), live)

    async def list_keys(self, tenant: str) -> list[KeySummary]:
        """The tenant's keys, oldest first (NotFound for an unknown tenant)."""
        await self.require(tenant)
        keys = [key for key in await self._keys() if key.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_at is not None, k.created_at or 0.0, k.key_id))

    async def revoke_all(self, tenant: str) -> int:
        """Revoke every live key of ``tenant`` (as :meth:`revoke` does each); how many were live."""
        revoked = 0
        for key in await self._keys():
            if key.tenant == tenant and await self.revoke(key.key_id):
                revoked += 1
        return revoked

    async def delete_record(self, tenant: str) -> None:
        """Forget ``tenant``: its record and its keys' records (revoke them first: :meth:`revoke_all`)."""
        for key in await self._keys():
            if key.tenant == tenant:
                await self._kv.delete(f"keyid.{key.key_id}")
        await self._kv.delete(f"tenant.{tenant}")

    async def _keys(self) -> list[KeySummary]:
        found = []
        for name, value in await self._kv.entries("keyid.*"):
            record = json.loads(value)
            found.append(
                KeySummary(
                    key_id=name.removeprefix("keyid."),
                    tenant=record["tenant"],
                    created_at=record.get("created_at"),
                    revoked=bool(record.get("revoked")),
                    revoked_at=record.get("revoked_at"),
                )
            )
        return found

    async def _issue(self, tenant: str) -> NewKey:
        issued = api_keys.issue_key()
        digest = api_keys.hash_key(issued.api_key, self._pepper)
        await self._kv.create(
            f"keyid.{issued.key_id}",
            json.dumps(
                {"tenant": tenant, "hash": digest, "revoked": False, "created_at": time.time()}
            ).encode(),
        )
        await self._kv.create(
            f"{_LOOKUP_PREFIX}{digest}", json.dumps({"key_id": issued.key_id, "tenant": tenant}).encode()
        )
        return NewKey(tenant=tenant, key_id=issued.key_id, api_key=issued.api_key)

    async def authenticate(self, api_key: str | None) -> str:
        """The tenant owning ``api_key``; Unauthenticated for a missing, unknown or revoked key."""
        return (await self.authenticate_key(api_key)).tenant

    async def authenticate_key(self, api_key: str | None) -> AuthenticatedKey:
        """The tenant owning ``api_key`` and the key's digest; Unauthenticated as :meth:`authenticate`."""
        if not api_key:
            raise Unauthenticated(
                "missing API key: send the header 'authorization: Bearer <api key>'",
                reason=Reason.API_KEY_MISSING,
            )
        if not api_keys.looks_like_key(api_key):
            raise Unauthenticated("invalid API key", reason=Reason.API_KEY_INVALID)
        digest = api_keys.hash_key(api_key, self._pepper)
        tenant = self._cache.get(digest)
        if tenant is not None:
            return AuthenticatedKey(tenant, digest)
        found = await self._kv.get(f"{_LOOKUP_PREFIX}{digest}")
        if found is None:
            raise Unauthenticated("invalid or revoked API key", reason=Reason.API_KEY_INVALID)
        tenant = json.loads(found.value)["tenant"]
        self._cache.put(digest, tenant)
        return AuthenticatedKey(tenant, digest)

    @contextlib.contextmanager
    def hold_stream(self, key: AuthenticatedKey) -> Iterator[asyncio.Event]:
        """Register an open stream of ``key``; the event is set when the key is revoked (any replica).
        ResourceExhausted when its tenant holds the most streams a tenant may hold open here."""
        with self.streams.hold(key.digest, key.tenant) as revoked:
            yield revoked

    async def run(self, stop: asyncio.Event) -> None:
        """Recheck the keys of open streams until ``stop`` (catches revocations whose note was lost)."""
        await self.streams.run(stop)

    async def require_live(self, key: AuthenticatedKey) -> None:
        """Unauthenticated unless ``key`` is still live in KV (no cache): a long upload checks its key
        again before it stores anything, so a key revoked (or a tenant removed) meanwhile leaves nothing."""
        if not await self._key_is_live(key.digest):
            self._forget(key.digest)
            raise Unauthenticated("invalid or revoked API key", reason=Reason.API_KEY_INVALID)

    async def _key_is_live(self, digest: str) -> bool:
        return await self._kv.get(f"{_LOOKUP_PREFIX}{digest}") is not None

    def _forget(self, digest: str) -> None:
        self._cache.forget(digest)
        self.streams.revoked(digest)

    def _on_note(self, op: str, key: str, _value: str) -> None:
        """Another replica revoked a key (stop trusting it and end its streams here too) or changed a
        tenant's limits (read them again at the next check)."""
        if op == "-" and key.startswith(_LOOKUP_PREFIX):
            self._forget(key.removeprefix(_LOOKUP_PREFIX))
        elif op == "+" and key.startswith("tenant."):
            self.limits.forget(key.removeprefix("tenant."))

    async def revoke(self, key_id: str) -> bool:
        """Revoke at once; False when it was already revoked. NotFound for an unknown key id."""
        if not api_keys.valid_key_id(key_id):
            raise InvalidInput.of([Violation("key_id", f"got {echo(key_id)}; expected 16 hex digits")])
        found = await self._kv.get(f"keyid.{key_id}")
        if found is None:
            raise NotFound(
                f"key {key_id} does not exist", reason=Reason.UNKNOWN_KEY, metadata={"keyId": key_id}
            )
        record = json.loads(found.value)
        # Delete the lookup entry first: from here on the key authenticates nothing (on this replica at
        # once, on the others when the note arrives; should it be lost, they trust their cached read for
        # up to cache_seconds more and end the key's streams at their next recheck).
        digest = record["hash"]
        await self._kv.delete(f"{_LOOKUP_PREFIX}{digest}")
        self._forget(digest)
        if self._notes is not None:
            self._notes.removed(f"{_LOOKUP_PREFIX}{digest}")
        if record.get("revoked"):
            return False
        record["revoked"], record["revoked_at"] = True, time.time()
        await self._kv.put(f"keyid.{key_id}", json.dumps(record).encode())
        return True


def _summary(record: dict, live_keys: int) -> TenantSummary:
    return TenantSummary(
        record["tenant"],
        record.get("name", ""),
        float(record.get("created_at", 0.0)),
        live_keys,
        tenant_limits.from_record(record),
    )


def _tenant_order(record: dict) -> tuple[float, str]:
    return (float(record.get("created_at", 0.0)), record["tenant"])


def _tenant_token(order: tuple[float, str]) -> str:
    return page_token(f"{order[0]!r}/{order[1]}")


def _parse_tenant_token(token: str) -> tuple[float, str] | None:
    """The (created_at, tenant) a page token continues after; None for the first page."""
    text = parse_page_token(token)
    if not text:
        return None
    created, _, tenant = text.partition("/")
    try:
        order = (float(created), tenant)
    except ValueError:
        order = None
    if order is None or not valid_tenant_id(tenant):
        raise InvalidInput.of([Violation("page_token", "is not a token from a previous response")])
    return order
