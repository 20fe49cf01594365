"""Copies of small stored objects this replica was handed (masks, pose images), for the passes that read them.

The segmentation service stores every mask and pose image it makes, then answers with their references
and, when asked (``copies_up_to_bytes``), with a copy of each small one; a diffusion worker asked with
``PassRequest.copy_output`` (its output is segmented next) answers with a copy of a small output in its
``completed`` event. The gateway keeps those copies for a while, bounded in bytes: the pass scheduler
attaches the masks and pose image a pass request's spec names to the request it publishes for the
diffusion worker (``PassRequest.copies``), and the gateway's own segmentation step hands the image it
segments to the segmentation service (``SegmentRequest.copies``) when this replica holds a copy of it (the
copy does not travel through the work queue again). One S3 round trip fewer per copy on the job's
critical path.

Nothing depends on a copy: the object is stored before any message names it, a replica that never saw the
copy (another replica's segmentation call, a restart) publishes the request without it, and the worker
uses a copy only when its hash matches the reference (``multipass.v1.ObjectCopy``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from multipass.copies import MAX_COPY_BYTES
from multipass.v1 import common_pb2, diffusion_pb2

__all__ = ["MAX_COPY_BYTES", "MAX_COPY_BYTES_PER_REQUEST", "ObjectCopies"]
#: The most copy bytes one pass request carries (NATS messages stay well under the 1 MiB default limit).
MAX_COPY_BYTES_PER_REQUEST = 512 * 1024


class ObjectCopies:
    """Recent copies by (bucket, key), least recently used dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._copies: OrderedDict[tuple[str, str], common_pb2.ObjectCopy] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def copy_limit(self) -> int:
        """What to ask the segmentation service for (``copies_up_to_bytes``); 0 when disabled."""
        return min(MAX_COPY_BYTES, self.max_bytes) if self.enabled else 0

    def __len__(self) -> int:
        return len(self._copies)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def remember(self, copies: Iterable[common_pb2.ObjectCopy]) -> None:
        for copy in copies:
            size = len(copy.data)
            if not copy.sha256 or not size or size > self.copy_limit:
                continue
            where = (copy.bucket, copy.key)
            previous = self._copies.pop(where, None)
            if previous is not None:
                self._bytes -= len(previous.data)
            self._copies[where] = copy
            self._bytes += size
        while self._bytes > self.max_bytes and self._copies:
            _, dropped = self._copies.popitem(last=False)
            self._bytes -= len(dropped.data)

    def held(self, ref: common_pb2.ImageRef) -> common_pb2.ObjectCopy | None:
        """The copy of the object ``ref`` names (same bucket, key and sha256), if this replica holds it."""
        copy = self._copies.get((ref.bucket, ref.key))
        return copy if copy is not None and copy.sha256 == ref.sha256 else None

    def for_spec(self, *specs: diffusion_pb2.PassSpec) -> list[common_pb2.ObjectCopy]:
        """The copies held of the specs' inputs (same bucket, key and sha256), within the per-request budget."""
        if not self._copies:
            return []
        found, total = [], 0
        for ref in (ref for spec in specs for ref in _input_refs(spec)):
            copy = self.held(ref)
            if copy is None or any(c is copy for c in found):
                continue
            if total + len(copy.data) > MAX_COPY_BYTES_PER_REQUEST:
                break
            self._copies.move_to_end((ref.bucket, ref.key))
            found.append(copy)
            total += len(copy.data)
        return found

    def attach(self, request: diffusion_pb2.PassRequest) -> diffusion_pb2.PassRequest | bytes:
        """``request`` as it goes out: unchanged without copies, else its bytes with the copies appended
        (a repeated field's entries may follow the rest of the message on the wire). With copies off, a
        request asking for a copy of its output asks for none (this replica would not keep it)."""
        if not self.enabled and request.copy_output:
            unasked = diffusion_pb2.PassRequest()
            unasked.CopyFrom(request)
            unasked.copy_output = False
            return unasked
        # The pass named to follow it may run ahead on the same worker: its inputs ride along too.
        copies = self.for_spec(request.spec, request.next_pass.spec)
        if not copies:
            return request
        return request.SerializeToString() + diffusion_pb2.PassRequest(copies=copies).SerializeToString()


def _input_refs(spec: diffusion_pb2.PassSpec) -> Iterable[common_pb2.ImageRef]:
    """The images a pass reads that may come from the segmentation service: its mask, its control image,
    its layers' masks (its input image is a diffusion output, which a diffusion worker may hold itself)."""
    if spec.HasField("mask"):
        yield spec.mask
    if spec.HasField("control_image"):
        yield spec.control_image
    for layer in spec.layers:
        if layer.HasField("mask"):
            yield layer.mask
