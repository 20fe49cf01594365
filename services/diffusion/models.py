"""The model directory: which models exist, their family, loading their components, and checking tune files.

Layout (docs/CONTRACTS.md): ``<MODEL_DIR>/diffusion/<name>/`` in diffusers format, optionally with
``unet_inpaint/`` (a 9-channel inpainting UNet), or ``<MODEL_DIR>/diffusion/<name>.safetensors``, one
A1111/civitai checkpoint (:mod:`multipass_diffusion.single_file`); ControlNets under
``diffusion/controlnet/<family>/<kind>/`` or, for the SD1.5 family, ``diffusion/controlnet/<kind>/``;
preprocessor weights under ``diffusion/preprocessors/``. Loading never downloads: everything is read with
``local_files_only``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from multipass import tune_formats
from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.model_catalog import base_models
from multipass_diffusion import comfy_lora, single_file

if TYPE_CHECKING:
    from multipass_diffusion.runtime import ModelRuntime

FAMILIES = base_models.PIPELINE_FAMILIES


@dataclass(frozen=True)
class ModelEntry:
    """A served model: a diffusers directory, or (``path`` ending in .safetensors) one checkpoint file."""

    name: str
    path: Path
    family: str

    @property
    def is_single_file(self) -> bool:
        return self.path.suffix == single_file.SUFFIX

    @property
    def config_dir(self) -> Path:
        """The diffusers-format configs of this model (a checkpoint tune of it is converted with them)."""
        return single_file.config_dir(self.path, self.family) if self.is_single_file else self.path

    @property
    def inpaint_unet_path(self) -> Path | None:
        if self.is_single_file:
            return None
        path = self.path / "unet_inpaint"
        return path if (path / "config.json").is_file() else None


def diffusion_root(model_dir: Path) -> Path:
    return Path(model_dir) / "diffusion"


def discover(model_dir: Path) -> dict[str, ModelEntry]:
    """Every model under ``<model_dir>/diffusion/`` by name (component folders left out): diffusers
    directories, then single-file checkpoints ``<name>.safetensors`` (one named like a directory is left
    out: the directory is the model). A model the worker cannot serve (not SD1.5/SDXL, a diffusers
    directory missing files its loaders read) is FailedPrecondition naming what is wrong with it: the
    rule of ``multipass models check`` (:mod:`multipass.model_catalog.base_models`)."""
    entries = {}
    for name, found in base_models.find_base_models(model_dir).items():
        if found.path.is_file():
            entries[name] = ModelEntry(name, found.path, single_file.family_of(found.path))
            continue
        family = family_of(found.path)
        if found.problem:
            raise FailedPrecondition(f"{found.problem} ({found.path})")
        entries[name] = ModelEntry(name, found.path, family)
    return entries


def select(model_dir: Path, names: tuple[str, ...]) -> list[ModelEntry]:
    """The served models: ``names`` (each must exist) or every model found."""
    found = discover(model_dir)
    if not names:
        if not found:
            raise FailedPrecondition(
                f"no diffusion model under {diffusion_root(model_dir)} (expected <name>/model_index.json or <name>.safetensors)"
            )
        return list(found.values())
    missing = [name for name in names if name not in found]
    if missing:
        raise FailedPrecondition(
            f"model(s) {', '.join(missing)} not found under {diffusion_root(model_dir)}; found: {', '.join(found) or 'none'}"
        )
    return [found[name] for name in names]


def family_of(path: Path) -> str:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"{path}/model_index.json cannot be read: {error}") from error
    family = FAMILIES.get(index.get("_class_name", "")) if isinstance(index, dict) else None
    if family is None:
        raise FailedPrecondition(
            f"{path}/model_index.json: pipeline class {index.get('_class_name') if isinstance(index, dict) else None!r} is not an SD1.5 or SDXL pipeline"
        )
    return family


def fingerprint(path: Path) -> str:
    """Identifies a model's weights cheaply: its config files' contents and its weight files' sizes
    (a single-file checkpoint: its name, size and modification time)."""
    digest = hashlib.sha256()
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        relative = str(file.relative_to(path))
        digest.update(relative.encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()


def load_pipeline(entry: ModelEntry, *, device: str, dtype):
    """The text-to-image pipeline of ``entry`` with all its components on ``device``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if entry.is_single_file:
        return single_file.load_pipeline(
            entry.path, entry.family, device=device, dtype=dtype, label=entry.name
        )

    pipeline_class = StableDiffusionXLPipeline if entry.family == "sdxl" else StableDiffusionPipeline
    kwargs = (
        {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        if entry.family == "sd15"
        else {}
    )
    try:
        pipe = pipeline_class.from_pretrained(entry.path, dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"cannot load model {entry.name} from {entry.path}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_inpaint_unet(entry: ModelEntry, *, device: str, dtype):
    from diffusers import UNet2DConditionModel

    path = entry.inpaint_unet_path
    if path is None:
        return None
    unet = UNet2DConditionModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    if unet.config.in_channels != 9:
        raise FailedPrecondition(
            f"{path}: an inpainting UNet has 9 input channels, this one has {unet.config.in_channels}"
        )
    return unet.to(device)


def controlnet_path(model_dir: Path, family: str, kind: str) -> Path | None:
    root = diffusion_root(model_dir) / "controlnet"
    candidates = [root / family / kind] + ([root / kind] if family == "sd15" else [])
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    return None


def installed_controlnets(model_dir: Path, family: str) -> list[str]:
    from multipass_diffusion.preprocessors import CONTROLNET_KINDS

    return [kind for kind in CONTROLNET_KINDS if controlnet_path(model_dir, family, kind) is not None]


def load_controlnet(model_dir: Path, family: str, kind: str, *, cross_attention_dim: int, device: str, dtype):
    from diffusers import ControlNetModel

    path = controlnet_path(model_dir, family, kind)
    if path is None:
        where = diffusion_root(model_dir) / "controlnet" / family / kind
        alternative = f" or {diffusion_root(model_dir) / 'controlnet' / kind}" if family == "sd15" else ""
        raise FailedPrecondition(
            f"controlnet={kind} needs a {family} ControlNet at {where}{alternative}, which is not installed"
        )
    model = ControlNetModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    if model.config.cross_attention_dim != cross_attention_dim:
        raise FailedPrecondition(
            f"{path}: ControlNet cross-attention dim {model.config.cross_attention_dim} does not fit the {family} UNet ({cross_attention_dim})"
        )
    return model.to(device)


@dataclass(frozen=True)
class TuneFile:
    """What a tune file holds, read from its safetensors header."""

    kind: str  # "lora" | "checkpoint"
    layout: str  # "kohya" | "diffusers" | "comfyui" | "ldm"
    cross_attention_dim: int | None
    has_second_text_encoder: bool


def inspect_tune(path: Path, field: str) -> TuneFile:
    """Classify a tune file (LoRA in kohya or diffusers layout, or a full checkpoint).

    A format the worker cannot apply (LyCORIS LoHa, LoKr, ..., :mod:`multipass.tune_formats`) is the
    field's invalid input, naming the format; the gateway refuses the same files at registration.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            shapes = {key: handle.get_slice(key).get_shape() for key in keys if _is_cross_attention_key(key)}
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidInput.of([Violation(field, f"is not a readable safetensors file: {error}")]) from error
    if not keys:
        raise InvalidInput.of([Violation(field, "is an empty safetensors file")])
    known = tune_formats.classify(keys)
    if known is not None and not known.supported:
        raise InvalidInput.of([Violation(field, known.unsupported)])
    is_lora = any("lora" in key for key in keys)
    if is_lora:
        layout = "kohya" if any(key.startswith(("lora_unet_", "lora_te")) for key in keys) else "diffusers"
        if comfy_lora.is_comfy(keys):
            layout = "comfyui"
        dims = [
            shape[1]
            for key, shape in shapes.items()
            if ("lora_down" in key or "lora_A" in key or "lora.down" in key) and len(shape) == 2
        ]
        has_te2 = any(
            key.startswith(("lora_te2_", "text_encoder_2.", "text_encoders.clip_g.")) for key in keys
        )
        return TuneFile("lora", layout, dims[0] if dims else None, has_te2)
    if any(key.startswith("model.diffusion_model.") for key in keys):
        dims = [
            shape[1]
            for key, shape in shapes.items()
            if len(shape) == 2 and key.startswith("model.diffusion_model.")
        ]
        has_te2 = any(key.startswith("conditioner.embedders.1.") for key in keys)
        return TuneFile("checkpoint", "ldm", dims[0] if dims else None, has_te2)
    if any(key.startswith("unet.") for key in keys):
        dims = [shape[1] for key, shape in shapes.items() if len(shape) == 2 and key.startswith("unet.")]
        has_te2 = any(key.startswith("text_encoder_2.") for key in keys)
        return TuneFile("checkpoint", "diffusers", dims[0] if dims else None, has_te2)
    raise InvalidInput.of(
        [
            Violation(
                field,
                "is neither a LoRA (kohya or diffusers keys) nor a checkpoint (unet./model.diffusion_model. keys)",
            )
        ]
    )


def _is_cross_attention_key(key: str) -> bool:
    return ("attn2.to_k" in key or "attn2_to_k" in key) and key.endswith(".weight")


def check_family(info: TuneFile, runtime: ModelRuntime, tag: str) -> None:
    """A tune must be made for the family of the model its pass runs on."""
    sdxl = runtime.family == "sdxl"
    if info.has_second_text_encoder and not sdxl:
        raise InvalidInput.of([Violation(tag, f"is an SDXL tune; model {runtime.name} is {runtime.family}")])
    expected = runtime.base.cross_attention_dim
    if info.cross_attention_dim is not None and info.cross_attention_dim != expected:
        raise InvalidInput.of(
            [
                Violation(
                    tag,
                    f"is a tune for another model family (cross-attention width {info.cross_attention_dim}; model {runtime.name} is {runtime.family} with {expected})",
                )
            ]
        )


def file_sha256(path: Path) -> str:
    """The sha256 of a file (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
