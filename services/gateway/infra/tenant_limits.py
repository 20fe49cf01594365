"""A tenant's own quotas (``Admin.SetTenantLimits``), kept in its record, and each replica's short-lived
read of them for the checks at submit and upload. 0 in a field means the gateway's setting applies."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from multipass.bus import KvBucket
from multipass.errors import Violation, echo


@dataclass(frozen=True)
class TenantLimits:
    #: Planned passes of the tenant's unfinished jobs (else MULTIPASS_GATEWAY_TENANT_MAX_PENDING_PASSES).
    max_pending_passes: int = 0
    #: Uploads held at once (else MULTIPASS_GATEWAY_TENANT_MAX_UPLOADS).
    max_uploads: int = 0


#: The largest value of each limit.
MAXIMA = {"max_pending_passes": 1_000_000, "max_uploads": 100_000}


def check(limits: TenantLimits, field: str = "limits") -> list[Violation]:
    return [
        Violation(
            f"{field}.{name}",
            f"got {echo(getattr(limits, name))}; expected 0..{most} (0 = the gateway's setting)",
        )
        for name, most in MAXIMA.items()
        if not 0 <= getattr(limits, name) <= most
    ]


def from_record(record: dict) -> TenantLimits:
    stored = record.get("limits") or {}
    return TenantLimits(**{name: int(stored.get(name, 0)) for name in MAXIMA})


def to_record(limits: TenantLimits) -> dict:
    return {name: getattr(limits, name) for name in MAXIMA if getattr(limits, name)}


class TenantLimitsCache:
    """Tenants' limits as read from ``multipass-tenants``, each trusted for ``ttl`` seconds (0: read every
    time); a replica that sets limits forgets its own read at once, the others within ``ttl``."""

    def __init__(self, kv: KvBucket, ttl: float, *, clock=time.monotonic):
        self._kv = kv
        self.ttl = ttl
        self._clock = clock
        self._read: dict[str, tuple[TenantLimits, float]] = {}

    async def get(self, tenant: str) -> TenantLimits:
        found = self._read.get(tenant)
        if found is not None and self._clock() < found[1]:
            return found[0]
        entry = await self._kv.get(f"tenant.{tenant}")
        limits = from_record(json.loads(entry.value)) if entry is not None else TenantLimits()
        if self.ttl > 0:
            self._read[tenant] = (limits, self._clock() + self.ttl)
        return limits

    def forget(self, tenant: str) -> None:
        self._read.pop(tenant, None)
