"""Named LoRAs (``<lora:NAME:W>``, every tenant's): the ``diffusion/loras/<NAME>.safetensors`` files of a
model directory, and the files there that are not read, each with what to do about it.

A1111 and ComfyUI users copy their ``models/Lora`` folder here; files the workers cannot offer (a NAME a tag
cannot spell, all digits like a tune id, a subfolder, a pickled ``.pt``/``.ckpt``) are left out, and
``multipass models check`` names each one, so a copied folder never loses files without a word.
"""

from __future__ import annotations

import re
from pathlib import Path

NAMED_LORAS_DIR = "diffusion/loras"
SUFFIX = ".safetensors"
#: What a named LoRA's NAME may be: what the prompt parser takes in a tag, and not all digits (a tune id).
NAMED_LORA_NAME = re.compile(r"^(?![0-9]+$)[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: Suffixes of LoRA files in other formats (pickled): never loaded.
_OTHER_FORMATS = (".pt", ".ckpt", ".bin", ".pth")
#: How many ignored files a report names before it counts the rest.
SHOWN = 5


def named_lora_files(model_dir: Path) -> dict[str, Path]:
    """Every named LoRA of the model directory, by NAME (files whose stem cannot be a tag's NAME are not)."""
    root = Path(model_dir) / NAMED_LORAS_DIR
    if not root.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(root.glob(f"*{SUFFIX}"))
        if NAMED_LORA_NAME.match(path.stem) and path.is_file()
    }


def _why_not(root: Path, path: Path) -> str:
    """Why the file at ``path`` (below ``root``) is no named LoRA; "" when it is one or is no LoRA at all."""
    relative = path.relative_to(root)
    if any(part.startswith(".") for part in relative.parts):
        return ""  # hidden: a download in progress, an editor's file
    suffix = path.suffix.lower()
    if suffix not in (SUFFIX, *_OTHER_FORMATS):
        return ""
    if len(relative.parts) > 1:
        return f"subfolders are not read: move it to {NAMED_LORAS_DIR}/"
    if suffix != SUFFIX:
        return "only .safetensors files are read (convert it)"
    if path.name != path.stem + SUFFIX:
        return f"the suffix must be {SUFFIX} in lower case"
    if path.stem.isdigit():
        return "an all-digit name reads as a tune id: rename it"
    if not NAMED_LORA_NAME.match(path.stem):
        suggestion = re.sub(r"[^A-Za-z0-9_.\-]+", "_", path.stem).strip("_.-")[:128] or "name"
        return f"a tag cannot spell its name (letters, digits, '_', '.', '-'): rename it, e.g. {suggestion}{SUFFIX}"
    return ""


def ignored_lora_files(model_dir: Path) -> list[tuple[str, str]]:
    """(path relative to the model directory, why it is not read) for each LoRA-like file of the folder
    that is no named LoRA."""
    root = Path(model_dir) / NAMED_LORAS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        reason = _why_not(root, path) if path.is_file() else ""
        if reason:
            found.append((path.relative_to(model_dir).as_posix(), reason))
    return found


def describe_ignored(ignored: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in ignored[:SHOWN])
    more = f"; and {len(ignored) - SHOWN} more" if len(ignored) > SHOWN else ""
    return f"not read: {shown}{more}"
