"""Small helpers over nats-py KeyValue: read-or-None and server-side filtered listings."""

from __future__ import annotations

import nats.js.errors
from multipass.bus import nats_errors
from nats.js.kv import KeyValue


async def get(store: KeyValue, key: str) -> tuple[bytes, int] | None:
    """(value, revision) of ``key``, or None when it does not exist (or was deleted)."""
    with nats_errors(f"read {key}"):
        try:
            entry = await store.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
    return (entry.value or b""), entry.revision


async def entries(store: KeyValue, pattern: str, *, values: bool = True) -> list[tuple[str, bytes]]:
    """Latest (key, value) of every live key matching ``pattern`` (NATS wildcards ``*`` and ``>``).

    The filter runs on the server (a KV watch on the pattern), so listing one tenant's keys does not
    read every tenant's. With ``values=False`` only keys are transferred (values come back empty).
    """
    found: dict[str, bytes] = {}
    with nats_errors(f"list {pattern}"):
        watcher = await store.watch(pattern, meta_only=not values, ignore_deletes=False)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.operation in ("DEL", "PURGE"):
                    found.pop(entry.key, None)
                else:
                    found[entry.key] = entry.value or b""
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
    return sorted(found.items())


async def keys(store: KeyValue, pattern: str) -> list[str]:
    return [key for key, _ in await entries(store, pattern, values=False)]


async def delete(store: KeyValue, key: str) -> None:
    with nats_errors(f"delete {key}"):
        await store.delete(key)
