"""Tenants and their API keys in KV bucket ``multipass-tenants``; each replica's cache of authenticated keys.

The bucket's keys, and how long a revoked key may still work on another replica: docs/CONTRACTS.md
("Tenants and API keys").
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass

from multipass.bus import KvBucket
from multipass.errors import InvalidInput, NotFound, Unauthenticated, Violation
from multipass_gateway.domain import api_keys

_TENANT_ID = re.compile(r"^t[0-9a-f]{16}$")


@dataclass(frozen=True)
class NewKey:
    tenant: str
    key_id: str
    api_key: str


def valid_tenant_id(tenant: str) -> bool:
    return bool(_TENANT_ID.match(tenant))


#: Most remembered keys per replica; beyond it the entries nearest to expiry go first.
AUTH_CACHE_MAX_KEYS = 10_000


class AuthCache:
    """Tenants of recently authenticated key hashes, each trusted for ``ttl`` seconds after its read."""

    def __init__(self, ttl: float, *, clock=time.monotonic, max_keys: int = AUTH_CACHE_MAX_KEYS):
        self.ttl = ttl
        self._clock = clock
        self._max_keys = max_keys
        #: key hash -> (tenant, monotonic time until which it is trusted); insertion order = expiry order.
        self._tenants: dict[str, tuple[str, float]] = {}

    def get(self, digest: str) -> str | None:
        found = self._tenants.get(digest)
        if found is None:
            return None
        tenant, until = found
        if self._clock() >= until:
            del self._tenants[digest]
            return None
        return tenant

    def put(self, digest: str, tenant: str) -> None:
        if self.ttl <= 0:
            return
        self._tenants.pop(digest, None)
        while len(self._tenants) >= self._max_keys:
            del self._tenants[next(iter(self._tenants))]
        self._tenants[digest] = (tenant, self._clock() + self.ttl)

    def forget(self, digest: str) -> None:
        self._tenants.pop(digest, None)


class TenantStore:
    def __init__(
        self, store: KvBucket, pepper: str = "", *, cache_seconds: float = 0.0, clock=time.monotonic
    ):
        self._kv = store
        self._pepper = pepper
        self._cache = AuthCache(cache_seconds, clock=clock)

    async def create_tenant(self, name: str) -> NewKey:
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise InvalidInput.of([Violation("name", f"got {name!r}; expected 1..100 printable characters")])
        tenant = "t" + secrets.token_hex(8)
        record = {"tenant": tenant, "name": name, "created_at": time.time()}
        await self._kv.create(f"tenant.{tenant}", json.dumps(record).encode())
        return await self._issue(tenant)

    async def create_key(self, tenant: str) -> NewKey:
        if not valid_tenant_id(tenant) or await self._kv.get(f"tenant.{tenant}") is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return await self._issue(tenant)

    async def _issue(self, tenant: str) -> NewKey:
        issued = api_keys.issue_key()
        digest = api_keys.hash_key(issued.api_key, self._pepper)
        await self._kv.create(
            f"keyid.{issued.key_id}",
            json.dumps({"tenant": tenant, "hash": digest, "revoked": False}).encode(),
        )
        await self._kv.create(
            f"key.{digest}", json.dumps({"key_id": issued.key_id, "tenant": tenant}).encode()
        )
        return NewKey(tenant=tenant, key_id=issued.key_id, api_key=issued.api_key)

    async def authenticate(self, api_key: str | None) -> str:
        """The tenant owning ``api_key``; Unauthenticated for a missing, unknown or revoked key."""
        if not api_key:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        if not api_keys.looks_like_key(api_key):
            raise Unauthenticated("invalid API key")
        digest = api_keys.hash_key(api_key, self._pepper)
        tenant = self._cache.get(digest)
        if tenant is not None:
            return tenant
        found = await self._kv.get(f"key.{digest}")
        if found is None:
            raise Unauthenticated("invalid or revoked API key")
        tenant = json.loads(found.value)["tenant"]
        self._cache.put(digest, tenant)
        return tenant

    async def revoke(self, key_id: str) -> bool:
        """Revoke at once; False when it was already revoked. NotFound for an unknown key id."""
        if not api_keys.valid_key_id(key_id):
            raise InvalidInput.of([Violation("key_id", f"got {key_id!r}; expected 16 hex digits")])
        found = await self._kv.get(f"keyid.{key_id}")
        if found is None:
            raise NotFound(f"key {key_id} does not exist")
        record = json.loads(found.value)
        # Delete the lookup entry first: from here on the key authenticates nothing (on this replica at
        # once; other replicas may trust their cached read for up to cache_seconds more).
        await self._kv.delete(f"key.{record['hash']}")
        self._cache.forget(record["hash"])
        if record.get("revoked"):
            return False
        record["revoked"] = True
        await self._kv.put(f"keyid.{key_id}", json.dumps(record).encode())
        return True
