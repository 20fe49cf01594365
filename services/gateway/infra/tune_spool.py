"""A tune file as its chunks arrive (``RegisterTune``): spooled to a temporary file, never held whole in memory.

The first :data:`SPOOL_MEMORY_BYTES` stay in memory (small files never touch the disk); the chunk that would
pass them moves the spool to an unnamed temporary file in the temp dir (``TMPDIR``, else ``/tmp``: the gateway
pod's emptyDir), so the gateway holds at most that much of a file however large it is. The SHA-256 and size
are counted as the chunks come, and the chunk that takes the file past its bound is refused before it is
written. Closing the spool deletes the file; being unnamed, it is gone with the process too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
import threading
from typing import BinaryIO

from multipass.errors import InvalidInput, Violation
from multipass_gateway.domain.tune_files import LENGTH_BYTES, head_bytes

#: Bytes of a file kept in memory before it moves to disk.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024


class TuneSpool:
    """One file being received. Writes run on a worker thread, one at a time; :meth:`close` waits for the
    one running (a cancelled upload closes the spool while its last write may still run)."""

    def __init__(self, max_bytes: int, *, memory_bytes: int = SPOOL_MEMORY_BYTES):
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        #: Bytes accepted so far.
        self.size = 0
        self._digest = hashlib.sha256()
        self._memory: io.BytesIO | None = io.BytesIO()
        self._disk: BinaryIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> TuneSpool:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def on_disk(self) -> bool:
        """Whether the file has moved from memory to a temporary file."""
        return self._disk is not None

    @property
    def bytes_in_memory(self) -> int:
        """Bytes of the file held in memory now (none once it is on disk)."""
        with self._lock:
            memory = self._memory
            if memory is None or memory.closed:
                return 0
            with memory.getbuffer() as view:
                return view.nbytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written."""
        return self._digest.hexdigest()

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; InvalidInput (``chunk``) when it would take the file past ``max_bytes``."""
        if self.size + len(chunk) > self.max_bytes:
            raise InvalidInput.of([Violation("chunk", f"file is larger than {self.max_bytes} bytes")])
        self.size += len(chunk)
        await asyncio.to_thread(self._append, chunk)

    def append(self, chunk: bytes) -> None:
        """:meth:`write` for a caller already on a worker thread (a fetch writing as it reads); the
        fetch bounds the size itself, and this refuses past ``max_bytes`` all the same."""
        if self.size + len(chunk) > self.max_bytes:
            raise InvalidInput.of([Violation("chunk", f"file is larger than {self.max_bytes} bytes")])
        self.size += len(chunk)
        self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self._digest.update(chunk)
            if self._memory is not None and self._memory.tell() + len(chunk) > self.memory_bytes:
                self._disk = tempfile.TemporaryFile(prefix="multipass-tune-")  # noqa: SIM115 (close() closes it)
                self._disk.write(self._memory.getbuffer())
                self._memory.close()
                self._memory = None
            self._file().write(chunk)

    def _file(self) -> BinaryIO:
        if self._closed:
            raise ValueError("the tune spool is closed")
        return self._memory if self._memory is not None else self._disk  # type: ignore[return-value]

    def head(self) -> bytes:
        """The file's first :func:`~multipass_gateway.domain.tune_files.head_bytes` bytes (blocking: call it
        on a worker thread), for :func:`~multipass_gateway.domain.tune_files.check_safetensors_head`."""
        with self._lock:
            file = self._file()
            file.seek(0)
            prefix = file.read(LENGTH_BYTES)
            head = prefix + file.read(max(0, head_bytes(prefix, self.size) - len(prefix)))
            file.seek(0, io.SEEK_END)
            return head

    def reader(self) -> BinaryIO:
        """The file, at its start, to read it back (e.g. upload it); no more writes after this."""
        with self._lock:
            file = self._file()
            file.flush()
            file.seek(0)
            return file

    def close(self) -> None:
        """Drop the file (from memory or disk); idempotent."""
        with self._lock:
            self._closed = True
            for file in (self._memory, self._disk):
                if file is not None:
                    file.close()
