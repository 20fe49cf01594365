"""Which entries of ``PassSpec.tune_files`` a pass needs on local disk (pure; the worker fetches them).

``tune_files`` maps keys to objects in the tune bucket: a tune id to its LoRA or checkpoint file, and
``<tune_id>/reference-<k>`` to the tune's ``k``-th reference face image (the identities of face swap and
of ``<faceid:ID:W>``; see docs/FINISHING.md and docs/DIFFUSION.md). A pass needs the file of every adapter
it may activate, i.e. the ``lora`` refs of ``spec.loras`` and of every ``spec.faces[*].loras`` (a faces
pass switches adapters per face), and every reference image. The engine reads them from
``PassInputs.tune_paths`` under the same keys.
"""

from __future__ import annotations

import re

from multipass.v1 import diffusion_pb2

_REFERENCE = re.compile(r"^(?P<tune>.+)/reference-(?P<index>\d+)$")
#: LoraRef kinds whose tune file is loaded (a ``faceid`` ref needs its tune's reference images instead).
FILE_KINDS = ("", "lora")


def reference_key(tune_id: str, index: int) -> str:
    """Key of a tune's ``index``-th reference image in ``PassSpec.tune_files``."""
    return f"{tune_id}/reference-{index}"


def reference_match(key: str) -> re.Match | None:
    """The match of a reference-image key (groups ``tune`` and ``index``), or None."""
    return _REFERENCE.match(key)


def is_reference_key(key: str) -> bool:
    return _REFERENCE.match(key) is not None


def reference_keys(spec: diffusion_pb2.PassSpec, tune_id: str) -> list[str]:
    """Keys of ``tune_id``'s reference images in ``spec.tune_files``, in index order."""
    indexed = []
    for key in spec.tune_files:
        match = _REFERENCE.match(key)
        if match and match["tune"] == tune_id:
            indexed.append((int(match["index"]), key))
    return [key for _, key in sorted(indexed)]


def needed_keys(spec: diffusion_pb2.PassSpec) -> list[str]:
    """Keys of ``spec.tune_files`` to fetch: adapter files of the pass and its faces, reference images.

    In order of first use; refs without a ``tune_files`` entry are left to the engine (it names the tag).
    """
    refs = [*spec.loras, *(ref for face in spec.faces for ref in face.loras)]
    keys = [ref.tune_id for ref in refs if ref.kind in FILE_KINDS and ref.tune_id in spec.tune_files]
    keys += sorted(key for key in spec.tune_files if is_reference_key(key))
    return list(dict.fromkeys(keys))


def tune_file_parts(spec: diffusion_pb2.PassSpec, keys) -> list[str]:
    """``key=sha256`` of the given ``spec.tune_files`` entries, sorted (unknown keys are skipped).

    For the pass-cache key of passes that read tune files the engine does not hash itself (the faces'
    LoRAs, reference images).
    """
    return [
        f"tune-file:{key}={spec.tune_files[key].sha256.lower()}"
        for key in sorted(set(keys))
        if key in spec.tune_files
    ]
