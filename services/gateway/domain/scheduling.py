"""The fair release policy for pass requests, and the names of the scheduler's KV markers (pure).

Tenants take turns, bounded in flight per tenant and in all (:func:`plan_release`). Each pass attempt
waiting for its turn has a ready entry ``sched.ready.<pass>`` and, once released, a flight marker
``sched.flight.<pass>`` (``<pass>`` = ``<tenant>.<job_id>.<image>.<pass name>.<attempt>``); the protocol
around them is described in docs/RELIABILITY.md ("Fair scheduling between tenants").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from multipass.v1 import events_pb2
from multipass_gateway.domain import job_state

READY = "sched.ready"
FLIGHT = "sched.flight"
#: Every marker of the scheduler.
MARKERS = "sched.>"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class PassKey(NamedTuple):
    """One attempt of one pass of one job; orders a tenant's queue (older jobs first).

    A named tuple: the release rounds hash and compare thousands of keys, and a tuple does both in C.
    """

    tenant: str
    job_id: str
    image: int
    pass_name: str
    attempt: int

    @property
    def suffix(self) -> str:
        return f"{self.tenant}.{self.job_id}.{self.image}.{self.pass_name}.{self.attempt}"

    @property
    def ready_key(self) -> str:
        return f"{READY}.{self.suffix}"

    @property
    def flight_key(self) -> str:
        return f"{FLIGHT}.{self.suffix}"

    @property
    def both(self) -> str:
        """The pattern of the pass's ready entry and flight marker together."""
        return f"sched.*.{self.suffix}"

    @property
    def valid(self) -> bool:
        return all(_TOKEN.match(part) for part in (self.tenant, self.job_id, self.pass_name)) and (
            self.image >= 0 and self.attempt >= 0
        )

    @classmethod
    def of_request(cls, tenant: str, request) -> PassKey:
        return cls(tenant, request.job_id, request.image_index, request.pass_name, request.attempt)

    @classmethod
    def parse(cls, suffix: str) -> PassKey | None:
        parts = suffix.split(".")
        if len(parts) != 5:
            return None
        tenant, job_id, image, pass_name, attempt = parts
        try:
            key = cls(tenant, job_id, int(image), pass_name, int(attempt))
        except ValueError:
            return None
        return key if key.valid else None


def parse_marker(name: str) -> tuple[str, PassKey] | None:
    """("ready" | "flight", key) of a KV key ``sched.<head>.<pass>``; None for anything else."""
    if not name.startswith("sched."):
        return None
    head, _, suffix = name[len("sched.") :].partition(".")
    if head not in ("ready", "flight"):
        return None
    key = PassKey.parse(suffix)
    return (head, key) if key is not None else None


def valid_job(tenant: str, job_id: str) -> bool:
    """Whether the names can be part of a marker (a job the planner made)."""
    return bool(_TOKEN.match(tenant) and _TOKEN.match(job_id))


def job_pattern(tenant: str, job_id: str) -> str:
    """The pattern of every marker of the job."""
    return f"sched.*.{tenant}.{job_id}.>"


def job_flight_pattern(tenant: str, job_id: str) -> str:
    return f"{FLIGHT}.{tenant}.{job_id}.>"


def plan_release(
    ready: Mapping[str, Sequence[PassKey]],
    in_flight: Mapping[str, int],
    *,
    tenant_limit: int,
    global_limit: int,
    after: str | None = None,
    own_limits: Mapping[str, int] | None = None,
) -> list[PassKey]:
    """Which ready passes to release now, in release order.

    Tenants take turns, one pass per turn, starting with the first tenant (in name order, cyclically)
    after ``after`` (the tenant served last, so no tenant is favoured by its name). A tenant's passes
    leave its queue in queue order. A tenant with ``tenant_limit`` passes in flight (its own limit from
    ``own_limits`` where that has one above 0) waits; nothing is released once ``global_limit`` passes
    are in flight.
    """
    own_limits = own_limits or {}
    tenants = sorted(t for t, queue in ready.items() if queue)
    if not tenants:
        return []
    start = next((i for i, t in enumerate(tenants) if after is not None and t > after), 0)
    order = tenants[start:] + tenants[:start]
    flying = Counter({t: n for t, n in in_flight.items() if n > 0})
    total = sum(flying.values())
    position = dict.fromkeys(order, 0)
    released: list[PassKey] = []
    progress = True
    while progress and total < global_limit:
        progress = False
        for tenant in order:
            if total >= global_limit:
                break
            queue = ready[tenant]
            if position[tenant] >= len(queue) or flying[tenant] >= (own_limits.get(tenant) or tenant_limit):
                continue
            released.append(queue[position[tenant]])
            position[tenant] += 1
            flying[tenant] += 1
            total += 1
            progress = True
    return released


def attempt_active(record: events_pb2.JobRecord | None, key: PassKey) -> bool:
    """Whether the pass attempt of ``key`` may still run: its job is unfinished and the attempt current."""
    if record is None or job_state.is_terminal(record):
        return False
    index = job_state.find_pass(record, key.image, key.pass_name)
    if index is None:
        return False
    state = record.job.images[key.image].passes[index]
    return state.attempt == key.attempt and state.status in job_state.ACTIVE_PASS
