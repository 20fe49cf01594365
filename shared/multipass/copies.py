"""Copies of stored objects that ride on messages (``multipass.v1.ObjectCopy``), and when one may be used.

A copy stands in for its object only when it is that very object: same bucket and key as the reference,
and the reference's sha256 equal to the copy's and to the hash of the copy's bytes. Anything else (no
copy, an old one, a damaged one) reads the object store, where the object always is.
"""

from __future__ import annotations

from collections.abc import Iterable

from multipass.images import sha256_hex
from multipass.v1 import common_pb2

#: The largest object that travels as a copy (bytes): masks and pose images at any size, diffusion outputs
#: only at small sizes.
MAX_COPY_BYTES = 256 * 1024


def object_copy(ref: common_pb2.ImageRef, data: bytes) -> common_pb2.ObjectCopy:
    """The copy of the object ``ref`` names, ``data`` being the bytes stored there."""
    return common_pb2.ObjectCopy(bucket=ref.bucket, key=ref.key, sha256=ref.sha256, data=data)


class CopyIndex:
    """The copies a message carried, by (bucket, key)."""

    def __init__(self, copies: Iterable[common_pb2.ObjectCopy]):
        self._copies = {(copy.bucket, copy.key): copy for copy in copies}

    def __bool__(self) -> bool:
        return bool(self._copies)

    def matching(self, ref: common_pb2.ImageRef) -> bytes | None:
        """The copy's bytes when it is the object ``ref`` names, else None."""
        copy = self._copies.get((ref.bucket, ref.key))
        if copy is None or not ref.sha256:
            return None
        wanted = ref.sha256.lower()
        if copy.sha256.lower() != wanted or sha256_hex(copy.data) != wanted:
            return None
        return copy.data
