"""A replica's in-memory picture of some KV keys, kept current without listing KV on every read.

KV stays the durable truth. The picture changes at once with this replica's own writes, with the other
replicas' notes (:mod:`multipass_gateway.infra.replica_notes`), and is rebuilt from a KV listing by
:meth:`KvMirror.resync`; changes made while the listing runs are replayed on top of it, so a resync never
undoes a write it raced with. The pass scheduler's queues and the pending-work budget are such mirrors
(docs/RELIABILITY.md, "The gateway's mirrors"); a subclass says how its keys make up its picture.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from multipass.bus import KvBucket
from multipass_gateway.infra import periodic
from multipass_gateway.infra.replica_notes import ReplicaNotes

log = logging.getLogger(__name__)

#: ``accept(op, key)``: whether a peer's note ("+" written, "-" removed) is applied to the picture.
NoteFilter = Callable[[str, str], bool]


class KvMirror(abc.ABC):
    """The mirror of the keys matching ``pattern`` (``<prefix>.>``) in ``store``.

    Subclasses keep the picture: :meth:`_put`, :meth:`_remove` and :meth:`_rebuild`. With
    ``read_values`` a resync reads the values the picture lacks (the first one reads every value at once);
    without it a listing brings keys only, and a value is read when it is needed.
    """

    def __init__(
        self,
        store: KvBucket | None,
        pattern: str,
        notes: ReplicaNotes | None = None,
        *,
        read_values: bool = False,
        accept: NoteFilter | None = None,
    ):
        self._kv = store
        self.pattern = pattern
        self._prefix = pattern.removesuffix(">")
        self.read_values = read_values
        self._accept = accept
        self.notes = notes or ReplicaNotes(None)
        self.notes.listen(self.on_note)
        #: Monotonic time of the last complete resync; None before the first one (or to force the next).
        self.synced_at: float | None = None
        self._changes: list[tuple[str, str, bytes | None, bool]] | None = None  # while a resync lists
        #: The resync under way: callers that come while it lists share it (two listing at once would
        #: each take the other's replay of changes).
        self._resyncing: asyncio.Future | None = None

    # the picture (subclasses) -------------------------------------------------------------------

    @abc.abstractmethod
    def _put(self, key: str, value: bytes | None, *, own: bool) -> None:
        """``key`` was written, by this replica (``own``) or a peer; ``value`` None when not known."""

    @abc.abstractmethod
    def _remove(self, pattern: str) -> None:
        """Forget what a KV purge of ``pattern`` removes (a key, or a pattern with ``*`` or ``>``)."""

    @abc.abstractmethod
    def _rebuild(self, listed: Mapping[str, bytes | None]) -> None:
        """Replace the picture by a listing (key -> value, None where the listing read no value)."""

    def _knows(self, key: str) -> bool:
        """Whether the picture holds the value of ``key`` (a resync with ``read_values`` skips it)."""
        return False

    # changes -------------------------------------------------------------------------------------

    def put(self, key: str, value: bytes | None = None, *, own: bool = True) -> None:
        """Apply a write to the picture (this replica's own unless ``own=False``)."""
        if self._changes is not None:
            self._changes.append(("+", key, value, own))
        self._put(key, value, own=own)

    def remove(self, pattern: str) -> None:
        """Apply a removal (a key or a pattern) to the picture."""
        if self._changes is not None:
            self._changes.append(("-", pattern, None, True))
        self._remove(pattern)

    def on_note(self, op: str, key: str, value: str) -> None:
        """A peer wrote (``+``) or removed (``-``) keys; notes about other keys are ignored."""
        if not key.startswith(self._prefix):
            return
        if self._accept is not None and not self._accept(op, key):
            return
        if op == "-":
            self.remove(key)
        else:
            self.put(key, value.encode() if value else None, own=False)

    # resync --------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.synced_at is not None

    def due(self, interval: float) -> bool:
        return self.synced_at is None or time.monotonic() - self.synced_at >= interval

    async def resync(self) -> None:
        """Rebuild the picture from KV, then replay the changes made while listing; a call while a resync
        is under way waits for that one."""
        if self._resyncing is None or self._resyncing.done():
            self._changes = []  # from the call on: what the listing may miss
            self._resyncing = asyncio.ensure_future(self._resync())
        await asyncio.shield(self._resyncing)

    async def _resync(self) -> None:
        try:
            listed = await self._list()
        finally:
            changes, self._changes = self._changes, None
        self._rebuild(listed)
        for op, key, value, own in changes:
            if op == "-":
                self._remove(key)
            else:
                self._put(key, value, own=own)
        self.synced_at = time.monotonic()

    async def _list(self) -> dict[str, bytes | None]:
        if self.read_values and not self.loaded:
            return dict(await self._kv.entries(self.pattern))
        keys = await self._kv.purged_keys(self.pattern)
        listed: dict[str, bytes | None] = dict.fromkeys(keys)
        if self.read_values:
            unknown = [key for key in keys if not self._knows(key)]
            values = await asyncio.gather(*(self._kv.get(key) for key in unknown))
            for key, found in zip(unknown, values, strict=True):
                if found is None:
                    del listed[key]
                else:
                    listed[key] = found.value
        return listed

    async def ensure_loaded(self) -> None:
        """Resync once if the picture was never loaded (concurrent callers share that one resync)."""
        if not self.loaded:
            await self.resync()

    async def run(self, stop: asyncio.Event, interval: float, what: str) -> None:
        """Resync every ``interval`` seconds until ``stop``; ``what`` names the picture in the logs."""
        await periodic.every(interval, stop, self.resync, what=f"refresh of the {what}")
