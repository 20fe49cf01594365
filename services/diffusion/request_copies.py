"""The copies of small inputs a pass request carries (``PassRequest.copies``): masks, pose images.

Which copy may stand in for its object: :class:`multipass.copies.CopyIndex`. Anything else reads the
object store, where the object always is.
"""

from __future__ import annotations

from PIL import Image

from multipass.copies import CopyIndex
from multipass.image_work import decode_image_async
from multipass.store import ObjectStore
from multipass.v1 import common_pb2
from multipass_diffusion import metrics


class RequestCopies(CopyIndex):
    async def read(
        self, ref: common_pb2.ImageRef, *, field: str, mode: str, store: ObjectStore
    ) -> Image.Image:
        """The decoded image ``ref`` names: from its copy when one matches, else from the store."""
        data = self.matching(ref) if self else None
        if data is None:
            if self:
                metrics.INPUT_COPIES.labels(outcome="miss").inc()
            return await store.get_image(ref, field=field, mode=mode)
        metrics.INPUT_COPIES.labels(outcome="hit").inc()
        return await decode_image_async(data, field=field, mode=mode)
