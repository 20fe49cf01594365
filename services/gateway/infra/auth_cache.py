"""Each replica's memory of recently authenticated API keys (by their hash), trusted for a short time.

How long a revoked key may still work on another replica: docs/CONTRACTS.md ("Tenants and API keys").
"""

from __future__ import annotations

import time

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
