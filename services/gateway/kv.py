"""Small helpers over nats-py KeyValue: read-or-None, server-side filtered listings, removal without a trace."""

from __future__ import annotations

import contextlib
import time

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from multipass.bus import nats_errors

_DELETED = ("DEL", "PURGE")
_BATCH = 256
#: How long one fetch of a listing waits before asking the consumer whether anything is left.
FETCH_WAIT_SECONDS = 0.25
#: How long a listing may take in all before it is Unavailable.
LIST_DEADLINE_SECONDS = 5.0


async def get(store: KeyValue, key: str) -> tuple[bytes, int] | None:
    """(value, revision) of ``key``, or None when it does not exist (or was deleted)."""
    with nats_errors(f"read {key}"):
        try:
            entry = await store.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
    return (entry.value or b""), entry.revision


async def entries(store: KeyValue, pattern: str, *, values: bool = True) -> list[tuple[str, bytes]]:
    """Latest (key, value) of every live key matching ``pattern`` (NATS wildcards ``*`` and ``>``), sorted.

    Reads the bucket's stream through a short-lived consumer delivering the last message per subject,
    filtered on the server, so listing one tenant's keys does not read every tenant's. With
    ``values=False`` only keys are transferred (values come back empty).

    When does it end? The consumer's pending count at creation, and each message's count of what is
    pending after it, say when the last message came, but keys purged while we list make both wrong
    (counted messages that never arrive; a 0 before the last one). So the stream has the last word: the
    listing is complete when every key that exists now (``stream_info`` with a subject filter) was
    delivered. A fetch waits only briefly (``FETCH_WAIT_SECONDS``) before asking; the listing gives up
    after ``LIST_DEADLINE_SECONDS`` (Unavailable), never stalls on a count that cannot be reached.
    """
    # nats-py's KeyValue keeps its stream name and subject prefix in these attributes (no public accessor).
    js, stream, prefix = store._js, store._stream, store._pre
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
                            if await _subjects(js, stream, subject_filter) <= seen:
                                break
                            remaining = 1
                        try:
                            msgs = await sub.fetch(batch=min(remaining, _BATCH), timeout=FETCH_WAIT_SECONDS)
                        except nats.errors.TimeoutError:
                            # Nothing came: keys purged since the consumer counted them never arrive.
                            # Done when every key that exists now was delivered; else wait again.
                            if await _subjects(js, stream, subject_filter) <= seen:
                                break
                            if time.monotonic() > deadline:
                                raise
                            continue
                        for msg in msgs:
                            remaining -= 1
                            headers = msg.headers or {}
                            seen.add(msg.subject)
                            key = msg.subject[len(prefix) :]
                            if headers.get("KV-Operation") in _DELETED or headers.get("Nats-Marker-Reason"):
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


async def keys(store: KeyValue, pattern: str) -> list[str]:
    return [key for key, _ in await entries(store, pattern, values=False)]


async def purged_keys(store: KeyValue, pattern: str) -> list[str]:
    """Every key matching ``pattern``, sorted, in one request, for prefixes whose keys are only ever
    removed by :func:`remove` (purged, so no delete marker keeps a removed key's subject alive).

    The stream reports the subjects that hold messages; with purge-only removal those are exactly the
    live keys. (The server answers up to 100,000 subjects at once, far above the markers' bounds.)
    """
    js, stream, prefix = store._js, store._stream, store._pre
    with nats_errors(f"list {pattern}"):
        subjects = await _subjects(js, stream, f"{prefix}{pattern}")
    return sorted(subject[len(prefix) :] for subject in subjects)


async def _subjects(js, stream: str, subject_filter: str) -> set[str]:
    info = await js.stream_info(stream, subjects_filter=subject_filter)
    return set((info.state.subjects or {}) if info.state else {})


async def delete(store: KeyValue, key: str) -> None:
    with nats_errors(f"delete {key}"):
        await store.delete(key)


async def remove(store: KeyValue, pattern: str) -> None:
    """Remove every key matching ``pattern`` with all its revisions, leaving no delete marker.

    For short-lived markers (pending work, callbacks, scheduler queues): a deleted key keeps a delete
    marker in the bucket's stream for ever, and every listing of its prefix reads those again, so a
    prefix that saw a million jobs would be read a million entries long. Purging the key's subject
    keeps a listing as long as the live keys. (Watchers do not see such a removal; none watch these.)
    """
    js, stream, prefix = store._js, store._stream, store._pre
    with nats_errors(f"remove {pattern}"):
        await js.purge_stream(stream, subject=f"{prefix}{pattern}")
