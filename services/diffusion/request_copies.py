"""The copies of small inputs a pass request carries (``PassRequest.copies``): masks, pose images.

A copy stands in for its object only when it is that very object: same bucket and key as the reference,
and the reference's sha256 equal to the copy's and to the hash of the copy's bytes. Anything else (no
copy, an old one, a damaged one) reads the object store, where the object always is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from PIL import Image

from multipass.images import decode_image, sha256_hex
from multipass.store import ObjectStore
from multipass.v1 import common_pb2
from multipass_diffusion import metrics


class RequestCopies:
    def __init__(self, copies: Iterable[common_pb2.ObjectCopy]):
        self._copies = {(copy.bucket, copy.key): copy for copy in copies}

    def matching(self, ref: common_pb2.ImageRef) -> bytes | None:
        """The copy's bytes when it is the object ``ref`` names, else None."""
        copy = self._copies.get((ref.bucket, ref.key))
        if copy is None or not ref.sha256:
            return None
        wanted = ref.sha256.lower()
        if copy.sha256.lower() != wanted or sha256_hex(copy.data) != wanted:
            return None
        return copy.data

    async def read(
        self, ref: common_pb2.ImageRef, *, field: str, mode: str, store: ObjectStore
    ) -> Image.Image:
        """The decoded image ``ref`` names: from its copy when one matches, else from the store."""
        data = self.matching(ref) if self._copies else None
        if data is None:
            if self._copies:
                metrics.INPUT_COPIES.labels(outcome="miss").inc()
            return await store.get_image(ref, field=field, mode=mode)
        metrics.INPUT_COPIES.labels(outcome="hit").inc()
        return await asyncio.to_thread(decode_image, data, field=field, mode=mode)
