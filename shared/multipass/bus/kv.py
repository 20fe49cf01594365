"""KV buckets: reads that answer None for a missing key, compare-and-set writes, listings that cannot stall.

A :class:`KvBucket` wraps one JetStream KV bucket. ``create`` and ``update`` are compare-and-set writes
that raise a :class:`~multipass.bus.errors.KvConflict` when another writer got there first;
:meth:`KvBucket.compare_and_set` retries a pure ``mutate`` on such conflicts. Listings read the bucket's
stream through a short-lived consumer filtered on the server and end even while keys vanish (see
:meth:`KvBucket.entries`); :meth:`KvBucket.remove` purges short-lived markers, leaving no delete marker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from multipass.bus.base import BusBase
from multipass.bus.errors import KeyExists, KeyVanished, RevisionMismatch, nats_errors
from multipass.errors import InvalidInput, NotFound, Unavailable, Violation

_DELETED = ("DEL", "PURGE")
_BATCH = 256
#: JetStream's error code for a write that expected another last sequence (the key exists, for create).
_WRONG_LAST_SEQUENCE = 10071
#: How long one fetch of a listing waits before asking the consumer whether anything is left.
FETCH_WAIT_SECONDS = 0.25
#: How long a listing may take in all before it is Unavailable.
LIST_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class KvEntry:
    """The current value of a key and its revision (what a compare-and-set write expects)."""

    key: str
    value: bytes
    revision: int


def _invalid_key(key: str) -> InvalidInput:
    return InvalidInput.of([Violation("key", f"got {key!r}; not a valid KV key")])


class KvBucket:
    def __init__(self, store: KeyValue, name: str):
        self._store = store
        self.name = name
        # nats-py's KeyValue keeps its JetStream context, stream name and subject prefix here (no accessor).
        self._js, self._stream, self._prefix = store._js, store._stream, store._pre

    # single keys -------------------------------------------------------------------------------------

    async def get(self, key: str) -> KvEntry | None:
        """The key's value and revision, or None when it does not exist (or was deleted)."""
        with nats_errors(f"read {self.name}/{key}"):
            try:
                entry = await self._store.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            except nats.js.errors.InvalidKeyError as error:
                raise _invalid_key(key) from error
        return KvEntry(key, entry.value or b"", entry.revision)

    async def put(self, key: str, value: bytes) -> int:
        """Write ``value`` whatever the key holds; returns the new revision."""
        with nats_errors(f"write {self.name}/{key}"):
            try:
                return await self._store.put(key, value)
            except nats.js.errors.InvalidKeyError as error:
                raise _invalid_key(key) from error

    async def create(self, key: str, value: bytes) -> int:
        """Write ``value`` only if the key does not exist (a deleted key counts as absent); returns the
        revision. KeyExists when it does; KeyVanished when it was removed while this looked at it."""
        with nats_errors(f"create {self.name}/{key}"):
            try:
                return await self._store.create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError as error:
                raise KeyExists(f"{self.name}/{key} exists") from error
            except nats.js.errors.KeyNotFoundError as error:
                raise KeyVanished(f"{self.name}/{key} was removed while it was being created") from error
            except nats.js.errors.BadRequestError as error:
                if error.err_code == _WRONG_LAST_SEQUENCE:
                    raise KeyExists(f"{self.name}/{key} exists") from error
                raise
            except nats.js.errors.InvalidKeyError as error:
                raise _invalid_key(key) from error

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        """Write ``value`` only if the key's revision is still ``revision``; returns the new revision.
        RevisionMismatch when another writer came first."""
        with nats_errors(f"write {self.name}/{key}"):
            try:
                return await self._store.update(key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError as error:
                raise RevisionMismatch(f"{self.name}/{key} is no longer at revision {revision}") from error
            except nats.js.errors.InvalidKeyError as error:
                raise _invalid_key(key) from error

    async def delete(self, key: str) -> None:
        """Delete the key, leaving a delete marker (watchers see it); see :meth:`remove` for markers."""
        with nats_errors(f"delete {self.name}/{key}"):
            try:
                await self._store.delete(key)
            except nats.js.errors.InvalidKeyError as error:
                raise _invalid_key(key) from error

    async def compare_and_set(
        self, key: str, mutate: Callable[[bytes | None], bytes | None], *, attempts: int = 10
    ) -> tuple[bytes | None, int]:
        """``mutate(current or None)`` gives the new value, written by compare-and-set, retried on conflicts.

        ``mutate`` may run several times; returning None leaves the entry as it is. Returns (value
        written or left, revision). Raises Unavailable when ``attempts`` conflicting writers in a row
        kept winning.
        """
        for _ in range(attempts):
            found = await self.get(key)
            current, revision = (found.value, found.revision) if found is not None else (None, 0)
            new = mutate(current)
            if new is None:
                return current, revision
            try:
                if revision == 0:
                    return new, await self.create(key, new)
                return new, await self.update(key, new, revision=revision)
            except (KeyExists, RevisionMismatch):
                continue
        raise Unavailable(f"{self.name}/{key}: {attempts} conflicting updates in a row")

    # listings ----------------------------------------------------------------------------------------

    async def entries(self, pattern: str, *, values: bool = True) -> list[tuple[str, bytes]]:
        """Latest (key, value) of every live key matching ``pattern`` (wildcards ``*`` and ``>``), sorted.

        Reads the bucket's stream through a short-lived consumer delivering the last message per subject,
        filtered on the server, so listing one tenant's keys does not read every tenant's. With
        ``values=False`` only keys are transferred (values come back empty).

        When does it end? The consumer's pending count at creation, and each message's count of what is
        pending after it, say when the last message came, but keys purged while we list make both wrong
        (counted messages that never arrive; a 0 before the last one). So the stream has the last word:
        the listing is complete when every key that exists now (``stream_info`` with a subject filter) was
        delivered. A fetch waits only briefly (``FETCH_WAIT_SECONDS``) before asking; the listing gives up
        after ``LIST_DEADLINE_SECONDS`` (Unavailable), never stalls on a count that cannot be reached.
        """
        js, stream, prefix = self._js, self._stream, self._prefix
        subject_filter = f"{prefix}{pattern}"
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            filter_subject=subject_filter,
            headers_only=not values,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        found: dict[str, bytes] = {}
        seen: set[str] = set()
        with nats_errors(f"list {pattern}"):
            info = await js.add_consumer(stream, config)
            try:
                remaining = info.num_pending or 0
                if remaining:
                    deadline = time.monotonic() + LIST_DEADLINE_SECONDS
                    sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
                    try:
                        while True:
                            if remaining <= 0:
                                # The count ran out, or a message said nothing is pending after it: with
                                # keys purged meanwhile either can be wrong, so the stream has the last word.
                                if await self._subjects(subject_filter) <= seen:
                                    break
                                remaining = 1
                            try:
                                msgs = await sub.fetch(
                                    batch=min(remaining, _BATCH), timeout=FETCH_WAIT_SECONDS
                                )
                            except (TimeoutError, nats.errors.TimeoutError):
                                # (nats-py raises asyncio's own TimeoutError too, when its deadline runs out
                                # between its two pull requests.)
                                # Nothing came: keys purged since the consumer counted them never arrive.
                                # Done when every key that exists now was delivered; else wait again.
                                if await self._subjects(subject_filter) <= seen:
                                    break
                                if time.monotonic() > deadline:
                                    raise
                                continue
                            for msg in msgs:
                                remaining -= 1
                                headers = msg.headers or {}
                                seen.add(msg.subject)
                                key = msg.subject[len(prefix) :]
                                if headers.get("KV-Operation") in _DELETED or headers.get(
                                    "Nats-Marker-Reason"
                                ):
                                    found.pop(key, None)
                                else:
                                    found[key] = msg.data or b""
                                if not msg.metadata.num_pending:
                                    remaining = 0  # the last one there is now, as far as the consumer knows
                    finally:
                        await sub.unsubscribe()
            finally:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, info.name)
        return sorted(found.items())

    async def keys(self, pattern: str) -> list[str]:
        """Every live key matching ``pattern``, sorted (a listing without the values)."""
        return [key for key, _ in await self.entries(pattern, values=False)]

    async def purged_keys(self, pattern: str) -> list[str]:
        """Every key matching ``pattern``, sorted, in one request, for prefixes whose keys are only ever
        removed by :meth:`remove` (purged, so no delete marker keeps a removed key's subject alive).

        The stream reports the subjects that hold messages; with purge-only removal those are exactly the
        live keys. (The server answers up to 100,000 subjects at once, far above the markers' bounds.)
        """
        with nats_errors(f"list {pattern}"):
            subjects = await self._subjects(f"{self._prefix}{pattern}")
        return sorted(subject[len(self._prefix) :] for subject in subjects)

    async def remove(self, pattern: str) -> None:
        """Remove every key matching ``pattern`` with all its revisions, leaving no delete marker.

        For short-lived markers (pending work, callbacks, scheduler queues): a deleted key keeps a delete
        marker in the bucket's stream for ever, and every listing of its prefix reads those again, so a
        prefix that saw a million jobs would be read a million entries long. Purging the key's subject
        keeps a listing as long as the live keys. (Watchers do not see such a removal; none watch these.)
        """
        with nats_errors(f"remove {pattern}"):
            await self._js.purge_stream(self._stream, subject=f"{self._prefix}{pattern}")

    async def _subjects(self, subject_filter: str) -> set[str]:
        info = await self._js.stream_info(self._stream, subjects_filter=subject_filter)
        return set((info.state.subjects or {}) if info.state else {})


class KeyValueBuckets(BusBase):
    async def kv(self, bucket: str) -> KvBucket:
        """The KV bucket (created by :meth:`ensure_topology`); NotFound if it does not exist."""
        if bucket not in self._kv:
            with nats_errors(f"open kv bucket {bucket}"):
                try:
                    self._kv[bucket] = KvBucket(await self.js.key_value(bucket), bucket)
                except nats.js.errors.BucketNotFoundError as error:
                    raise NotFound(f"kv bucket {bucket} does not exist (run ensure_topology)") from error
        return self._kv[bucket]  # type: ignore[return-value]

    async def kv_update(
        self,
        bucket: str,
        key: str,
        mutate: Callable[[bytes | None], bytes | None],
        *,
        attempts: int = 10,
    ) -> tuple[bytes | None, int]:
        """:meth:`KvBucket.compare_and_set` on ``key`` of ``bucket``."""
        return await (await self.kv(bucket)).compare_and_set(key, mutate, attempts=attempts)
