"""The pass cache: a pass's output image keyed by the hash of everything that determines it.

Two implementations of one small, synchronous interface (the engine calls it from its device thread):
:class:`MemoryPassCache` (an in-process LRU) and :class:`StorePassCache` (PNG objects under
``multipass-jobs/cache/<hash>.png``, shared by every worker; it drives the asynchronous object store on
the worker's event loop). A cache that fails to read or write never fails the pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from typing import Protocol

from PIL import Image

from multipass.errors import NotFound
from multipass.images import decode_image, encode_png

log = logging.getLogger(__name__)

CACHE_BUCKET = "multipass-jobs"
CACHE_PREFIX = "cache/"


class PassCache(Protocol):
    def get(self, key: str) -> Image.Image | None: ...

    def put(self, key: str, image: Image.Image) -> None: ...


class MemoryPassCache:
    """Keeps the PNG bytes of the ``max_entries`` most recently used outputs."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Image.Image | None:
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                return None
            self._entries.move_to_end(key)
        return decode_image(data, field="cache")

    def put(self, key: str, image: Image.Image) -> None:
        data = encode_png(image)
        with self._lock:
            self._entries[key] = data
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class StorePassCache:
    """Outputs as ``<bucket>/cache/<hash>.png`` through :class:`multipass.store.ObjectStore`.

    ``loop`` is the event loop the store runs on; calls come from another thread and wait at most
    ``timeout`` seconds. The worker writes entries itself (:meth:`write_encoded`), with the PNG bytes it
    already encoded for the pass output and after publishing the completion, so the device thread never
    encodes or uploads a second copy.
    """

    #: The engine skips :meth:`put`; the worker calls :meth:`write_encoded` instead.
    written_by_worker = True

    def __init__(
        self,
        store,
        loop: asyncio.AbstractEventLoop,
        *,
        bucket: str = CACHE_BUCKET,
        prefix: str = CACHE_PREFIX,
        timeout: float = 30.0,
    ):
        self.store = store
        self.loop = loop
        self.bucket = bucket
        self.prefix = prefix
        self.timeout = timeout

    def object_key(self, key: str) -> str:
        return f"{self.prefix}{key}.png"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def get(self, key: str) -> Image.Image | None:
        try:
            data = self._call(self.store.get_bytes(self.bucket, self.object_key(key), field="cache"))
        except NotFound:
            return None
        except Exception:  # noqa: BLE001 - a cache read failure must never fail the pass
            log.warning("pass cache read failed", exc_info=True, extra={"cache_key": key})
            return None
        return decode_image(data, field="cache")

    def lookup(self, key: str) -> concurrent.futures.Future:
        """Start :meth:`get` on the store's loop and return at once: a future of the image or None.

        The engine starts the pass beside it and takes the cached image if it comes first (a store read
        is a round trip; a pass that is not in the cache, the usual case, then never waits for it).
        """

        async def read() -> Image.Image | None:
            try:
                data = await self.store.get_bytes(self.bucket, self.object_key(key), field="cache")
            except NotFound:
                return None
            except Exception:  # noqa: BLE001 - a cache read failure must never fail the pass
                log.warning("pass cache read failed", exc_info=True, extra={"cache_key": key})
                return None
            return await asyncio.to_thread(decode_image, data, field="cache")

        return asyncio.run_coroutine_threadsafe(read(), self.loop)

    async def write_encoded(self, key: str, data: bytes) -> None:
        """Store an output's PNG bytes under its key (from the event loop); failures are only logged."""
        try:
            await self.store.put_bytes(self.bucket, self.object_key(key), data, content_type="image/png")
        except Exception:  # noqa: BLE001 - a cache write failure must never fail the pass
            log.warning("pass cache write failed", exc_info=True, extra={"cache_key": key})

    def put(self, key: str, image: Image.Image) -> None:
        try:
            self._call(
                self.store.put_bytes(
                    self.bucket, self.object_key(key), encode_png(image), content_type="image/png"
                )
            )
        except Exception:  # noqa: BLE001 - a cache write failure must never fail the pass
            log.warning("pass cache write failed", exc_info=True, extra={"cache_key": key})
