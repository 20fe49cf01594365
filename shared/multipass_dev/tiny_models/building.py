"""What every tiny-model factory shares: build once per version, under a file lock, with bounded torch threads."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def is_current(marker: Path, version: str) -> bool:
    """True when ``marker`` records that models of ``version`` were built completely."""
    return marker.is_file() and marker.read_text().strip() == version


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive file lock, so concurrent processes build the same models once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def bounded_torch_threads(limit: int = 2) -> Iterator[None]:
    """Run the block with at most ``limit`` torch threads, restoring the previous number after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, limit))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_once(
    base: Path,
    *,
    marker: str,
    version: str,
    lock: str,
    replaces: Iterable[str],
    write: Callable[[Path], None],
) -> None:
    """Run ``write(base)`` unless ``version`` is already built there: under the file lock ``lock``, with
    bounded torch threads, after removing the folders in ``replaces``; the marker then records the version."""
    marker_path = base / marker
    if is_current(marker_path, version):
        return
    base.mkdir(parents=True, exist_ok=True)
    with build_lock(base / lock):
        if is_current(marker_path, version):
            return
        with bounded_torch_threads():
            for name in replaces:
                shutil.rmtree(base / name, ignore_errors=True)
            write(base)
        marker_path.write_text(version + "\n")


def byte_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP byte-level BPE table: each byte 0..255 to the printable symbol that stands for it."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in symbols), strict=True))
