"""Default person layouts shared by a tenant's jobs: one Layout call and one pose image per size and count.

A job with persons and no input image is laid out by ``Segmentation.Layout`` as evenly spaced standing
figures, which depend only on the image's size and the number of persons. Its pose image is stored
content-addressed under the tenant's ``jobs/<tenant>/layouts/`` (``<sha256>.png``: a name no other
content takes), so every later job of the tenant with that size and count can use the same answer: this
replica keeps it for ``ttl`` seconds and skips the call, the render and the store (about 8 ms of a
submit). The image stays until the tenant is removed; deleting one job leaves it for the others.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from multipass.v1 import segmentation_pb2

#: How long an answer is reused, and how many are kept (size x count x tenant; each a few KB).
LAYOUT_TTL_SECONDS = 600.0
LAYOUT_CAPACITY = 4096

_Key = tuple[str, int, int, int, bool]


class DefaultLayouts:
    def __init__(
        self, ttl: float = LAYOUT_TTL_SECONDS, capacity: int = LAYOUT_CAPACITY, *, clock=time.monotonic
    ):
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._answers: OrderedDict[_Key, tuple[bytes, float]] = OrderedDict()

    def get(self, key: _Key) -> segmentation_pb2.LayoutResponse | None:
        """The answer kept for ``(tenant, width, height, count, with_pose)``, a fresh copy; None when none
        is, or it is older than the ttl."""
        found = self._answers.get(key)
        if found is None:
            return None
        data, until = found
        if self._clock() >= until:
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return segmentation_pb2.LayoutResponse.FromString(data)

    def put(self, key: _Key, response: segmentation_pb2.LayoutResponse) -> None:
        """Keep a default layout's answer (a detected one, or one whose pose image is not shared, is not)."""
        if response.source != "default":
            return
        self._answers[key] = (response.SerializeToString(), self._clock() + self.ttl)
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def forget(self, tenant: str) -> None:
        """Drop a removed tenant's answers (its layouts went with its objects)."""
        for key in [k for k in self._answers if k[0] == tenant]:
            del self._answers[key]
