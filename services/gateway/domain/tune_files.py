"""Whether a tune file is one the workers load (pure): a safetensors file whose header describes its data,
in a tune format the workers know. Only the head of the file is needed (the 8-byte header length and the
JSON header after it) and its size, so a file spooled to disk is checked without reading it back whole.
Pickled ``.ckpt``/``.pt`` files are refused: they execute code when loaded.
"""

from __future__ import annotations

import json

from multipass import tune_formats
from multipass.errors import InvalidInput, Violation
from multipass.safetensors_header import header_problem

#: Bytes of a safetensors header (the JSON after the 8-byte length) at most. The format allows 100 MB; LoRA
#: and checkpoint headers (tensor table and training metadata) stay far below this, and parsing one costs
#: several times its size in memory, so the gateway takes no more.
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
#: Bytes of the header length that starts a safetensors file (little-endian).
LENGTH_BYTES = 8


def head_bytes(prefix: bytes, size: int) -> int:
    """How many leading bytes of a ``size``-byte file :func:`check_safetensors_head` reads, given the file's
    first :data:`LENGTH_BYTES` (``prefix``): those and the header they announce, or only those when the
    announced length is out of bounds (the file is refused without its header)."""
    if size < 10 or len(prefix) < LENGTH_BYTES:
        return min(size, LENGTH_BYTES)
    length = int.from_bytes(prefix[:LENGTH_BYTES], "little")
    if length < 2 or length > min(MAX_SAFETENSORS_HEADER, size - LENGTH_BYTES):
        return LENGTH_BYTES
    return LENGTH_BYTES + length


def check_safetensors(data: bytes, field: str, family: str = "") -> None:
    """InvalidInput unless ``data`` is a safetensors file (8-byte header length, then a JSON object)."""
    view = memoryview(data)
    check_safetensors_head(view[: head_bytes(view[:LENGTH_BYTES], len(data))], len(data), field, family)


def check_safetensors_head(head: bytes | memoryview, size: int, field: str, family: str = "") -> None:
    """InvalidInput unless a file of ``size`` bytes that starts with ``head`` is a safetensors file.

    ``head`` holds at least the file's first :func:`head_bytes` bytes (more are ignored); refusals name
    ``field`` (``chunk`` or ``metadata.url``), or ``metadata.base_family`` when the file is of another family.
    """
    problem = None
    header = None
    if size < 10:
        problem = f"is {size} bytes; not a safetensors file"
    else:
        length = int.from_bytes(head[:LENGTH_BYTES], "little")
        if length < 2 or length > min(MAX_SAFETENSORS_HEADER, size - LENGTH_BYTES):
            problem = "is not a safetensors file (bad header length); pickled checkpoints are not accepted"
        else:
            if len(head) < LENGTH_BYTES + length:
                raise ValueError(f"head holds {len(head)} bytes; the header ends at {LENGTH_BYTES + length}")
            try:
                header = json.loads(bytes(head[LENGTH_BYTES : LENGTH_BYTES + length]))
            except (UnicodeDecodeError, ValueError):
                header = None
            if not isinstance(header, dict):
                problem = "is not a safetensors file (header is not a JSON object)"
            else:
                described = header_problem(header, size - LENGTH_BYTES - length)
                problem = f"is a damaged safetensors file: {described}" if described else None
    if problem or header is None:
        raise InvalidInput.of([Violation(field, problem or "is not a safetensors file")])
    check_tune_format(header, field, family)


def check_tune_format(header: dict, field: str, family: str = "") -> None:
    """InvalidInput naming the format of a tune file the worker cannot load (LyCORIS LoHa, LoKr, ...)."""
    shapes = {
        name: entry.get("shape", [])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }
    found = tune_formats.classify(shapes, shapes)
    if found is not None and not found.supported:
        raise InvalidInput.of([Violation(field, found.unsupported)])
    mismatch = tune_formats.family_mismatch(shapes, family) if family else None
    if mismatch:
        raise InvalidInput.of(
            [Violation("metadata.base_family", f"got {family}; the file is not: {mismatch}")]
        )
    if found is None and not any("lora" in name for name in shapes):
        example = next(iter(shapes), "")
        raise InvalidInput.of(
            [
                Violation(
                    field,
                    f"is in no tune format the workers load (tensors such as {example[:120]!r}): expected a LoRA "
                    "(kohya lora_unet_*/lora_te*_*, diffusers/PEFT *.lora_A/*.lora_B, ComfyUI diffusion_model.*) "
                    "or a checkpoint (model.diffusion_model.* or unet.*)",
                )
            ]
        )
