"""A tenant's own quotas (``Admin.SetTenantLimits``), kept in its record, and each replica's short-lived
read of them for the checks at submit and upload and for the pass scheduler. 0 in a field means the
gateway's setting applies."""

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
    #: Passes released and unfinished at once (else MULTIPASS_GATEWAY_TENANT_MAX_PASSES_IN_FLIGHT).
    max_passes_in_flight: int = 0


#: The largest value of each limit.
MAXIMA = {"max_pending_passes": 1_000_000, "max_uploads": 100_000, "max_passes_in_flight": 100_000}


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
        time); a replica that sets limits uses them at once, the others when its note arrives (they forget
    their read) or, should it be lost, within ``ttl``. The pass scheduler
        peeks at the last read without I/O where it cannot wait."""

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
        self._read[tenant] = (limits, self._clock() + self.ttl)  # ttl 0: kept for peek, never trusted
        return limits

    def peek(self, tenant: str) -> TenantLimits | None:
        """The limits last read for ``tenant``, however old (None: never read, or forgotten); no I/O, for
        sync callers."""
        found = self._read.get(tenant)
        return found[0] if found is not None else None

    def remember(self, tenant: str, limits: TenantLimits) -> None:
        """The limits this replica just wrote: trusted from now on, like a fresh read."""
        self._read[tenant] = (limits, self._clock() + self.ttl)

    def forget(self, tenant: str) -> None:
        self._read.pop(tenant, None)
