"""Small helpers over nats-py KeyValue: read-or-None, server-side filtered listings, removal without a trace."""

from __future__ import annotations

import contextlib

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from multipass.bus import nats_errors

_DELETED = ("DEL", "PURGE")
_BATCH = 256


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
    filtered on the server, so listing one tenant's keys does not read every tenant's. The consumer's
    pending count at creation bounds how many messages make up the listing (nats-py's KV watcher may
    signal "no more" before delivering what it already received), and each message's own pending count
    ends it early when keys were removed meanwhile (a purged key's message never arrives). With
    ``values=False`` only keys are transferred (values come back empty).
    """
    # nats-py's KeyValue keeps its stream name and subject prefix in these attributes (no public accessor).
    js, stream, prefix = store._js, store._stream, store._pre
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        filter_subject=f"{prefix}{pattern}",
        headers_only=not values,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    found: dict[str, bytes] = {}
    with nats_errors(f"list {pattern}"):
        info = await js.add_consumer(stream, config)
        try:
            remaining = info.num_pending or 0
            if remaining:
                sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
                try:
                    while remaining > 0:
                        try:
                            msgs = await sub.fetch(batch=min(remaining, _BATCH), timeout=5.0)
                        except nats.errors.TimeoutError:
                            # Keys removed (purged) while we listed never arrive; stop once none is left.
                            if (await js.consumer_info(stream, info.name)).num_pending:
                                raise
                            break
                        for msg in msgs:
                            remaining -= 1
                            headers = msg.headers or {}
                            key = msg.subject[len(prefix) :]
                            if headers.get("KV-Operation") in _DELETED or headers.get("Nats-Marker-Reason"):
                                found.pop(key, None)
                            else:
                                found[key] = msg.data or b""
                            if not msg.metadata.num_pending:
                                remaining = 0  # the last one there is now (removed keys included)
                finally:
                    await sub.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, info.name)
    return sorted(found.items())


async def keys(store: KeyValue, pattern: str) -> list[str]:
    return [key for key, _ in await entries(store, pattern, values=False)]


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
