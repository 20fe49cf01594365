"""Named LoRAs: ``<lora:NAME:W>`` for LoRA files the operator installed in the model directory.

A1111 and ComfyUI users keep shared LoRAs (detail tweakers, styles) in a folder and tag them by file name.
Here that folder is ``diffusion/loras/`` (:data:`multipass.model_catalog.lora_folder.NAMED_LORAS_DIR`): a file
``<NAME>.safetensors`` answers ``<lora:NAME:W>`` for every tenant, beside the tenants' own tunes (whose
ids are digits). A worker lists each one it can read as capability ``lora:<NAME>``, and as
``lora:<NAME>:<model>`` for every served model it fits, so the gateway refuses at submit a name that no
worker has or that does not fit the model of the pass that loads it.

:func:`local_file` is how a pass finds the file of any LoRA ref: the tune file the worker fetched for it
(``spec.tune_files``), else the named LoRA.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.model_catalog.lora_folder import NAMED_LORA_NAME, NAMED_LORAS_DIR, named_lora_files
from multipass.v1 import diffusion_pb2, prompt_pb2
from multipass_diffusion import models
from multipass_diffusion.passes.context import PassInputs

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
#: Facts about a file, by (path, size, mtime): a LoRA is read once however many passes and Info calls use it.
_shas: dict[tuple[str, int, int], str] = {}
_tunes: dict[tuple[str, int, int], models.TuneFile] = {}


def is_name(tune_id: str) -> bool:
    return bool(NAMED_LORA_NAME.match(tune_id))


def path_of(model_dir: Path, name: str) -> Path | None:
    """The installed file of ``name``; None when there is none (or ``name`` cannot be one)."""
    if not is_name(name):
        return None
    path = Path(model_dir) / NAMED_LORAS_DIR / f"{name}{SUFFIX}"
    return path if path.is_file() else None


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def sha256(path: Path) -> str:
    key = _stat_key(path)
    if key not in _shas:
        _shas[key] = models.file_sha256(path)
    return _shas[key]


def inspect(path: Path, field: str) -> models.TuneFile:
    key = _stat_key(path)
    if key not in _tunes:
        _tunes[key] = models.inspect_tune(path, field)
    return _tunes[key]


def capabilities(model_dir: Path, runtimes: Mapping[str, object]) -> list[str]:
    """``lora:<NAME>`` for each readable named LoRA, ``lora:<NAME>:<model>`` for each model it fits."""
    found: list[str] = []
    for name, path in named_lora_files(model_dir).items():
        tag = f"<lora:{name}>"
        try:
            info = inspect(path, tag)
        except InvalidInput as error:
            log.warning("named LoRA not usable", extra={"path": str(path), "error": str(error)})
            continue
        found.append(f"lora:{name}")
        for model, runtime in runtimes.items():
            try:
                models.check_family(info, runtime, tag)
            except InvalidInput:
                continue
            found.append(f"lora:{name}:{model}")
    return found


def local_file(
    spec: diffusion_pb2.PassSpec, inputs: PassInputs, model_dir: Path, ref: prompt_pb2.LoraRef, field: str
) -> tuple[Path, str]:
    """The file of a LoRA ref and its sha256: the fetched tune file of ``spec.tune_files``, else the named
    LoRA of the model directory. InvalidInput naming ``field`` when it has neither."""
    if ref.tune_id in spec.tune_files:
        path = inputs.tune_paths.get(ref.tune_id)
        if path is None:
            raise FailedPrecondition(f"{field}: the tune file was not fetched to local disk")
        path = Path(path)
        return path, spec.tune_files[ref.tune_id].sha256.lower() or models.file_sha256(path)
    named = path_of(model_dir, ref.tune_id)
    if named is None:
        where = (
            f"; and no named LoRA {NAMED_LORAS_DIR}/{ref.tune_id}{SUFFIX} is installed"
            if is_name(ref.tune_id)
            else ""
        )
        raise InvalidInput.of([Violation(field, f"has no file in spec.tune_files{where}")])
    return named, sha256(named)
