"""Tenants and their API keys in KV bucket ``multipass-tenants``.

Keys of the bucket:

* ``tenant.<tenant>``: ``{"tenant", "name", "created_at"}``
* ``key.<hash>``: ``{"key_id", "tenant"}`` (only live keys; the hash is :func:`auth.hash_key`)
* ``keyid.<key_id>``: ``{"tenant", "hash", "revoked"}`` (for revocation by public id)

Authentication reads ``key.<hash>`` once per key per ``cache_seconds``
(``MULTIPASS_GATEWAY_AUTH_CACHE_SECONDS``, default 2 s; 0 = every call): a burst of calls with one key
costs one KV read. Only keys found live are remembered, by their hash (the secret itself is not kept), so
a revoked or rotated key stops working on the replica that revoked it at once and on every other replica
within ``cache_seconds``; an unknown key is read again on each call. The cache is looked up by the
key's HMAC, as the KV bucket is, so presented key material is never compared with stored material.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass

from nats.js.kv import KeyValue

from multipass.bus import nats_errors
from multipass.errors import InvalidInput, NotFound, Unauthenticated, Violation
from multipass_gateway import auth, kv

_TENANT_ID = re.compile(r"^t[0-9a-f]{16}$")


@dataclass(frozen=True)
class Tenant:
    tenant: str
    name: str


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
        self, store: KeyValue, pepper: str = "", *, cache_seconds: float = 0.0, clock=time.monotonic
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
        with nats_errors("create tenant"):
            await self._kv.create(f"tenant.{tenant}", json.dumps(record).encode())
        return await self._issue(tenant)

    async def create_key(self, tenant: str) -> NewKey:
        if not valid_tenant_id(tenant) or await kv.get(self._kv, f"tenant.{tenant}") is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return await self._issue(tenant)

    async def _issue(self, tenant: str) -> NewKey:
        issued = auth.issue_key()
        digest = auth.hash_key(issued.api_key, self._pepper)
        with nats_errors("store key"):
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
        if not auth.looks_like_key(api_key):
            raise Unauthenticated("invalid API key")
        digest = auth.hash_key(api_key, self._pepper)
        tenant = self._cache.get(digest)
        if tenant is not None:
            return tenant
        found = await kv.get(self._kv, f"key.{digest}")
        if found is None:
            raise Unauthenticated("invalid or revoked API key")
        tenant = json.loads(found[0])["tenant"]
        self._cache.put(digest, tenant)
        return tenant

    async def revoke(self, key_id: str) -> bool:
        """Revoke at once; False when it was already revoked. NotFound for an unknown key id."""
        if not auth.valid_key_id(key_id):
            raise InvalidInput.of([Violation("key_id", f"got {key_id!r}; expected 16 hex digits")])
        found = await kv.get(self._kv, f"keyid.{key_id}")
        if found is None:
            raise NotFound(f"key {key_id} does not exist")
        record = json.loads(found[0])
        # Delete the lookup entry first: from here on the key authenticates nothing (on this replica at
        # once; other replicas may trust their cached read for up to cache_seconds more).
        await kv.delete(self._kv, f"key.{record['hash']}")
        self._cache.forget(record["hash"])
        if record.get("revoked"):
            return False
        record["revoked"] = True
        with nats_errors("revoke key"):
            await self._kv.put(f"keyid.{key_id}", json.dumps(record).encode())
        return True
