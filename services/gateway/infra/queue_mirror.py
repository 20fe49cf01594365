"""The pass scheduler's picture of its KV markers, so a release round needs no KV listing.

Kept by :class:`~multipass_gateway.infra.kv_mirror.KvMirror`: the replica's own writes change it
synchronously (before their KV round trips complete, so two rounds never plan the same pass), peers'
notes and resyncs do the rest. A resync keeps the releases still in progress in flight (their flight
markers may not be written yet). ``foreign`` holds ready entries another replica announced: that replica
releases them, unless they are still waiting after ``orphan_after`` seconds (it died), when any may.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from multipass.bus import KvBucket
from multipass_gateway.domain.scheduling import MARKERS, PassKey, parse_marker
from multipass_gateway.infra.kv_mirror import KvMirror, NoteFilter
from multipass_gateway.infra.replica_notes import ReplicaNotes


class QueueMirror(KvMirror):
    def __init__(
        self,
        store: KvBucket | None,
        notes: ReplicaNotes | None = None,
        *,
        accept: NoteFilter | None = None,
    ):
        super().__init__(store, MARKERS, notes, accept=accept)
        #: Ready entries, with the OutboxRequest bytes when this replica has them.
        self.ready: dict[PassKey, bytes | None] = {}
        self.flight: set[PassKey] = set()
        #: Ready entries a peer announced: monotonic time this replica first heard of them.
        self.foreign: dict[PassKey, float] = {}
        #: Passes whose release (publish, then flight marker) is under way on this replica.
        self.releasing: set[PassKey] = set()

    # the picture ---------------------------------------------------------------------------------

    def _put(self, key: str, value: bytes | None, *, own: bool) -> None:
        parsed = parse_marker(key)
        if parsed is None:
            return
        head, pass_key = parsed
        if head == "flight":
            self.flight.add(pass_key)
            return
        known = pass_key in self.ready
        if not known or value is not None:
            self.ready[pass_key] = value
        if own:
            self.foreign.pop(pass_key, None)
        elif not known:
            # A pass this replica queued itself stays its own, even when a peer queued it too (both
            # flushed the same outbox): else each could wait for the other to release it.
            self.foreign[pass_key] = time.monotonic()

    def _remove(self, pattern: str) -> None:
        if pattern.startswith("sched.*."):
            rest = pattern[len("sched.*.") :]
            if rest.endswith(".>"):
                tenant, _, job_id = rest.removesuffix(".>").partition(".")
                gone = [k for k in (*self.ready, *self.flight) if k.tenant == tenant and k.job_id == job_id]
            else:
                key = PassKey.parse(rest)
                gone = [key] if key is not None else []
            heads: tuple[str, ...] = ("ready", "flight")
        else:
            parsed = parse_marker(pattern)
            if parsed is None:
                return
            gone, heads = [parsed[1]], (parsed[0],)
        for key in gone:
            if "ready" in heads:
                self.ready.pop(key, None)
                self.foreign.pop(key, None)
            if "flight" in heads:
                self.flight.discard(key)

    def _rebuild(self, listed: Mapping[str, bytes | None]) -> None:
        known, foreign = self.ready, self.foreign
        self.ready, self.flight, self.foreign = {}, set(), {}
        for name in listed:
            parsed = parse_marker(name)
            if parsed is None:
                continue
            head, key = parsed
            if head == "ready":
                self.ready[key] = known.get(key)
                if key in foreign:
                    self.foreign[key] = foreign[key]
            else:
                self.flight.add(key)
        self.flight.update(self.releasing)

    # reading -------------------------------------------------------------------------------------

    def queues(self, orphan_after: float) -> tuple[dict[str, list[PassKey]], list[PassKey]]:
        """(ready passes this replica may release, per tenant in queue order; passes in flight)."""
        now = time.monotonic()
        ready: dict[str, list[PassKey]] = {}
        for key in self.ready:
            if key in self.flight or key in self.releasing:
                continue
            if key not in self.foreign or now - self.foreign[key] > orphan_after:
                ready.setdefault(key.tenant, []).append(key)
        for queue in ready.values():
            queue.sort()
        return ready, list(self.flight)

    def waiting(self) -> int:
        return sum(1 for key in self.ready if key not in self.flight)

    def waiting_by_tenant(self) -> Counter:
        return Counter(key.tenant for key in self.ready if key not in self.flight)

    def any_waiting(self) -> bool:
        """Whether a ready entry waits for its release (stops at the first: a backlog is mostly waiting)."""
        flight = self.flight
        return any(key not in flight for key in self.ready)
