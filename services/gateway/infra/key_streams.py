"""A replica's open streams by the API key that opened them, so that revoking the key ends them.

A long stream (``WatchJob``) authenticates once, then holds the digest of its key for as long as it is
open and gets an :class:`asyncio.Event` that is set when the key is revoked. A revocation reaches a
replica in one of three ways:

* its own ``RevokeKey``: at once;
* another replica's note ``- key.<digest>`` on ``multipass.gateway.notes``: within milliseconds;
* failing both (core NATS is at most once, so a note can be lost in a reconnect): a check that reads
  each key with open streams from KV every ``recheck_seconds``.

So a revoked key's streams end on every replica within ``recheck_seconds`` plus one KV read at worst.
The cost does not grow with the number of streams: no stream polls, and the periodic check costs one KV
read per distinct key with open streams, none while no stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from multipass.errors import ResourceExhausted

log = logging.getLogger(__name__)

#: ``is_live(digest)``: whether the key with this digest still authenticates (read from KV).
KeyCheck = Callable[[str], Awaitable[bool]]


class KeyStreams:
    def __init__(self, is_live: KeyCheck, recheck_seconds: float, *, max_per_tenant: int = 0):
        self._is_live = is_live
        self.recheck_seconds = recheck_seconds
        #: Streams one tenant may hold open here (0: no bound).
        self.max_per_tenant = max_per_tenant
        #: key digest -> the revocation events of the streams it opened.
        self._open: dict[str, set[asyncio.Event]] = {}
        self._per_tenant: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, digest: str, tenant: str = "") -> Iterator[asyncio.Event]:
        """Register a stream of the key ``digest`` (of ``tenant``) while the block runs; the event is set
        on revocation. ResourceExhausted, before anything is held, when the tenant holds its bound."""
        if self.max_per_tenant and self._per_tenant[tenant] >= self.max_per_tenant:
            raise ResourceExhausted(
                f"{self._per_tenant[tenant]} streams of this tenant are open on this gateway, the most it may "
                f"hold (MULTIPASS_GATEWAY_TENANT_MAX_STREAMS); close one, or retry",
                retry_after_seconds=5.0,
            )
        revoked = asyncio.Event()
        self._open.setdefault(digest, set()).add(revoked)
        self._per_tenant[tenant] += 1
        try:
            yield revoked
        finally:
            self._per_tenant[tenant] -= 1
            if self._per_tenant[tenant] <= 0:
                del self._per_tenant[tenant]
            streams = self._open.get(digest)
            if streams is not None:
                streams.discard(revoked)
                if not streams:
                    del self._open[digest]

    def open_count(self, digest: str | None = None) -> int:
        """Streams open with the key ``digest`` (with any key when None)."""
        if digest is not None:
            return len(self._open.get(digest, ()))
        return sum(len(streams) for streams in self._open.values())

    def revoked(self, digest: str) -> int:
        """End the streams of the key ``digest``; returns how many were open."""
        streams = self._open.get(digest, set())
        for event in streams:
            event.set()
        if streams:
            log.info("streams of a revoked key ended", extra={"streams": len(streams)})
        return len(streams)

    async def recheck(self) -> int:
        """Read every key with open streams once; end the streams of those no longer live."""
        ended = 0
        for digest in list(self._open):
            if not await self._is_live(digest):
                ended += self.revoked(digest)
        return ended

    async def run(self, stop: asyncio.Event) -> None:
        """Recheck every ``recheck_seconds`` until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.recheck_seconds)
                return
            try:
                await self.recheck()
            except Exception as error:  # noqa: BLE001 - KV unreachable: try again next round
                log.warning("open streams' keys not rechecked", extra={"error": repr(error)})
