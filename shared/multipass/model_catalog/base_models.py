"""The base models of a model directory, their family, and whether each one can be served.

One answer for ``multipass models check`` (:mod:`.layout`) and the diffusion worker
(``multipass_diffusion.models``, which refuses to start on a model this module finds unusable):

- ``diffusion/<name>/model_index.json``: a diffusers pipeline, its family from the pipeline class. It is
  complete when every component the worker loads (UNet, VAE, text encoder(s), tokenizer(s), scheduler) has
  the files its loader reads; an interrupted pull, or a folder copied without its weights, lacks some.
- ``diffusion/<name>.safetensors``: one A1111/civitai checkpoint (a directory of the same name wins), its
  family from its tensor names, read from the safetensors header with the standard library.
- ``diffusion/<name>.config/`` is a checkpoint's config directory and the component folders hold
  components: neither is ever a base model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionInpaintPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
}
#: Folders of ``diffusion/`` that hold components, never a base model (a diffusers upscaler has a
#: model_index.json too).
COMPONENT_FOLDERS = frozenset(
    {
        "controlnet",
        "preprocessors",
        "ip_adapter",
        "upscaler",
        "face_restorer",
        "face_swapper",
        "prompt_expander",
        "loras",
    }
)
CHECKPOINT_SUFFIX = ".safetensors"
CHECKPOINT_CONFIG_SUFFIX = ".config"
#: Tensor-name prefixes that tell a checkpoint's family (checked in this order).
CHECKPOINT_FAMILY_MARKERS = (
    ("conditioner.embedders.1.model.", "sdxl"),
    ("cond_stage_model.transformer.", "sd15"),
)
REFUSED_CHECKPOINT_MARKERS = (
    ("cond_stage_model.model.", "an SD2.x checkpoint (OpenCLIP text encoder)"),
    ("conditioner.embedders.0.model.", "an SDXL refiner checkpoint"),
)
#: The pipeline components the worker loads, per family, and what kind of files each one needs.
PIPELINE_COMPONENTS = {
    "sd15": {
        "unet": "diffusers",
        "vae": "diffusers",
        "text_encoder": "transformers",
        "tokenizer": "tokenizer",
    },
    "sdxl": {
        "unet": "diffusers",
        "vae": "diffusers",
        "text_encoder": "transformers",
        "text_encoder_2": "transformers",
        "tokenizer": "tokenizer",
        "tokenizer_2": "tokenizer",
    },
}
#: The weights file names each loader reads (one of them, or its sharded index).
WEIGHT_FILES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: Path
    #: "sd15" or "sdxl"; "" when it is neither.
    family: str
    #: Why the worker cannot serve it ("" when it can): not an SD1.5/SDXL model, or files missing.
    problem: str = ""


def checkpoint_family(names: Iterable[str]) -> tuple[str, str]:
    """("sd15" | "sdxl", "") from a checkpoint's tensor names, or ("", why it is neither: "is ...")."""
    names = list(names)
    for prefix, family in CHECKPOINT_FAMILY_MARKERS:
        if any(name.startswith(prefix) for name in names):
            return family, ""
    for prefix, what in REFUSED_CHECKPOINT_MARKERS:
        if any(name.startswith(prefix) for name in names):
            return "", f"is {what} ({prefix}* tensors); only SD1.5 and SDXL are served"
    markers = " or ".join(prefix + "*" for prefix, _ in CHECKPOINT_FAMILY_MARKERS)
    return "", f"is not an SD1.5 or SDXL single-file checkpoint (no {markers} tensors)"


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header; ValueError when it is not one, OSError."""
    with Path(path).open("rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise ValueError(f"its header claims {length} bytes")
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError("its header is cut short")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return [name for name in header if name != "__metadata__"]


def _component_gap(folder: Path, kind: str) -> str:
    """What the component at ``folder`` lacks ("" when nothing)."""
    if not folder.is_dir():
        return f"{folder.name}/"
    if kind == "tokenizer":
        if (folder / "tokenizer.json").is_file() or all(
            (folder / name).is_file() for name in ("vocab.json", "merges.txt")
        ):
            return ""
        return f"{folder.name}/tokenizer.json (or vocab.json and merges.txt)"
    if not (folder / "config.json").is_file():
        return f"{folder.name}/config.json"
    names = WEIGHT_FILES[kind]
    if any((folder / name).is_file() or (folder / f"{name}.index.json").is_file() for name in names):
        return ""
    variants = sorted(p.name for p in folder.glob("*.fp16.*") if p.is_file())
    hint = f" (found only {', '.join(variants)}: rename it {names[0]})" if variants else ""
    return f"{folder.name}/{names[0]}{hint}"


def pipeline_gaps(path: Path, family: str) -> list[str]:
    """The files a diffusers pipeline directory of ``family`` lacks for the worker to load it."""
    index = _read_json(path / "model_index.json")
    gaps = []
    for component, kind in PIPELINE_COMPONENTS.get(family, {}).items():
        spec = index.get(component)
        if isinstance(spec, list) and spec and spec[0] is None:
            continue  # the pipeline has none (e.g. a refiner without the first text encoder)
        gap = _component_gap(path / component, kind)
        if gap:
            gaps.append(gap)
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        gaps.append("scheduler/scheduler_config.json")
    return gaps


def incomplete(name: str, gaps: list[str]) -> str:
    return (
        f"model {name} is incomplete: it lacks {', '.join(gaps)}; an interrupted `multipass models pull` "
        "resumes when run again"
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def find_base_models(model_dir: Path) -> dict[str, BaseModel]:
    """Every base model under ``<model_dir>/diffusion/`` by name: diffusers directories, then checkpoints."""
    root = Path(model_dir) / "diffusion"
    if not root.is_dir():
        return {}
    found: dict[str, BaseModel] = {}
    children = sorted(root.iterdir())
    for child in children:
        if (
            child.name in COMPONENT_FOLDERS
            or child.name.endswith(CHECKPOINT_CONFIG_SUFFIX)
            or not (child / "model_index.json").is_file()
        ):
            continue
        class_name = str(_read_json(child / "model_index.json").get("_class_name", ""))
        family = PIPELINE_FAMILIES.get(class_name, "")
        if not family:
            problem = f"model {child.name}: pipeline class {class_name!r} is not an SD1.5 or SDXL pipeline"
        else:
            gaps = pipeline_gaps(child, family)
            problem = incomplete(child.name, gaps) if gaps else ""
        found[child.name] = BaseModel(child.name, child, family, problem)
    for child in children:
        name = child.name[: -len(CHECKPOINT_SUFFIX)]
        if child.suffix != CHECKPOINT_SUFFIX or name in found or not child.is_file():
            continue
        try:
            family, problem = checkpoint_family(safetensors_names(child))
        except (OSError, ValueError) as error:
            family, problem = "", f"is not a readable safetensors checkpoint: {error}"
        found[name] = BaseModel(name, child, family, f"{child.name} {problem}" if problem else "")
    return found
