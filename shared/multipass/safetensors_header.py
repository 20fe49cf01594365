"""Whether a safetensors header describes its file: every tensor's dtype, shape and byte range.

A safetensors file is an 8-byte header length, a JSON header naming each tensor's ``dtype``, ``shape``
and ``data_offsets`` (start and end within the data that follows), and the data. :func:`header_problem`
checks what a loader would refuse later (an unknown dtype, a range past the end of the data, ranges that
overlap or leave bytes uncovered, a range whose length is not the shape's size), so a file is refused
when it arrives rather than on its first use.

Pure: a parsed header and the data length in, a sentence or None out.
"""

from __future__ import annotations

import math

#: Bytes per element of each dtype the format names.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def header_problem(header: dict, data_bytes: int) -> str | None:
    """What is wrong with ``header`` for a file with ``data_bytes`` bytes after it; None when nothing is."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        return "its __metadata__ is not a map of strings to strings"
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(name, entry, data_bytes)
        if problem:
            return problem
        start, end = entry["data_offsets"]
        ranges.append((start, end, name))
    if not ranges:
        return "holds no tensors"
    ranges.sort()
    position = 0
    for start, end, name in ranges:
        if start != position:
            what = "overlaps the tensor before it" if start < position else "leaves bytes before it unused"
            return f"tensor {name[:120]!r} {what} (data_offsets start at {start}, expected {position})"
        position = end
    if position != data_bytes:
        return f"its tensors cover {position} of the {data_bytes} data bytes"
    return None


def _entry_problem(name: str, entry: object, data_bytes: int) -> str | None:
    shown = repr(name[:120])
    if not isinstance(entry, dict):
        return f"tensor {shown} is not described by a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"tensor {shown} has dtype {str(dtype)[:20]!r}; known: {', '.join(DTYPE_BYTES)}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"tensor {shown} has no shape of whole numbers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        return f"tensor {shown} has data_offsets {str(offsets)[:40]} outside the {data_bytes} data bytes"
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        return f"tensor {shown} of shape {shape} {dtype} needs {expected} bytes; its data_offsets hold {offsets[1] - offsets[0]}"
    return None
