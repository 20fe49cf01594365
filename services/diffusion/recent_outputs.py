"""The outputs this worker stored lately, kept decoded in memory for the next pass of the same chain.

A job's passes form chains (base -> person-0 -> person-1 -> ...): each pass's input image is the output
the pass before it stored. When that pass ran on this worker, its output is still here, decoded, so the
next one skips the object-store read and the PNG decode. An entry is used only for the exact object it
was stored as: same bucket, same key and the same sha256 the request's reference carries (a reference
without a sha256 always reads the store). Outputs are stored (and their ``completed`` event published)
before they are remembered, so nothing depends on this memory: a miss, an eviction or a restart only
costs the read. (A pass run ahead, ``run_ahead.py``, has its input remembered while it is being stored:
only that run knows the reference before the ``completed`` event names it.)

Bounded by bytes (``MULTIPASS_DIFFUSION_RECENT_OUTPUTS_MB``, 0 turns it off), least recently used first
out. Entries hand out copies, so a pass that changes its input in place cannot change the next one's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from PIL import Image

from multipass_diffusion import metrics


class RecentOutputs:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, int(budget_bytes))
        self._entries: OrderedDict[tuple[str, str], tuple[str, Image.Image, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def remember(self, bucket: str, key: str, sha256: str, image: Image.Image) -> None:
        """Keep ``image`` as the object stored at ``bucket/key`` with ``sha256`` (a copy is kept)."""
        size = _size_of(image)
        if not self.enabled or not sha256 or size > self.budget_bytes:
            return
        kept = image.copy()
        with self._lock:
            old = self._entries.pop((bucket, key), None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[(bucket, key)] = (sha256.lower(), kept, size)
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def recall(self, bucket: str, key: str, sha256: str, mode: str) -> Image.Image | None:
        """A copy of the image stored at ``bucket/key`` if it is the one with ``sha256``, in ``mode``."""
        if not self.enabled or not sha256:
            return None
        with self._lock:
            found = self._entries.get((bucket, key))
            if found is None or found[0] != sha256.lower():
                found = None
            else:
                self._entries.move_to_end((bucket, key))
        if found is None:
            metrics.RECENT_OUTPUTS.labels(outcome="miss").inc()
            return None
        metrics.RECENT_OUTPUTS.labels(outcome="hit").inc()
        image = found[1]
        return image.copy() if image.mode == mode else image.convert(mode)


def _size_of(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())
