"""Tune files received at once by one gateway replica (``MULTIPASS_GATEWAY_MAX_TUNE_UPLOADS``).

Each upload holds a slot from its metadata to its stored record; one more is refused at once with
RESOURCE_EXHAUSTED rather than queued (a queued upload would hold its client's stream open with nothing
read). The bound keeps the replica's temporary files and fetched tune files to ``limit`` of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from multipass.errors import ResourceExhausted


class TuneUploadSlots:
    def __init__(self, limit: int, *, retry_after_seconds: float):
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        #: Uploads holding a slot now (one event loop changes it: no lock).
        self.running = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block; ResourceExhausted when every slot is taken."""
        if self.running >= self.limit:
            raise ResourceExhausted(
                f"{self.running} tune file uploads are in progress on this gateway replica, the most it "
                f"receives at once; retry after {self.retry_after_seconds:g} s",
                retry_after_seconds=self.retry_after_seconds,
                metadata={"scope": "tune_uploads", "limit": str(self.limit)},
            )
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
