"""Base models given as one A1111/civitai ``.safetensors`` checkpoint (SD1.5 or SDXL), loaded offline.

``<MODEL_DIR>/diffusion/<name>.safetensors`` is a model named ``<name>``, in the original (LDM) layout
that A1111, ComfyUI and civitai use. Its family is read from its tensor names (SDXL's second text encoder
``conditioner.embedders.1.``, SD1.5's ``cond_stage_model.transformer.``); diffusers' ``from_single_file``
converts it with a local diffusers-format config directory, never the network:

- the config of its family shipped with the worker (``single_file_configs/sd15`` = SD1.5,
  ``single_file_configs/sdxl`` = SDXL base 1.0: model_index.json and the components' configs), with
  CLIP tokenizers built from the CLIP BPE merges shipped beside them (``clip_merges.txt``);
- or ``<MODEL_DIR>/diffusion/<name>.config/``, a diffusers-format config directory (model_index.json,
  component configs, optionally tokenizers) for a checkpoint of other sizes.

SD2.x and SDXL refiner checkpoints (OpenCLIP-only text encoders) are refused naming what was found.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from multipass.errors import FailedPrecondition
from multipass.model_catalog.base_models import checkpoint_family

SUFFIX = ".safetensors"
CONFIG_SUFFIX = ".config"
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "single_file_configs"
CLIP_MERGES = SHIPPED_CONFIGS / "clip_merges.txt"


def config_override(path: Path) -> Path:
    """Where a diffusers-format config for the checkpoint at ``path`` may sit: ``<name>.config/``."""
    path = Path(path)
    return path.with_name(path.name[: -len(SUFFIX)] + CONFIG_SUFFIX)


def family_of(path: Path) -> str:
    """ "sd15" or "sdxl" from the checkpoint's tensor names; FailedPrecondition for anything else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise FailedPrecondition(f"{path} is not a readable safetensors checkpoint: {error}") from error
    family, problem = checkpoint_family(keys)
    if problem:
        raise FailedPrecondition(f"{path} {problem}")
    return family


def config_dir(path: Path, family: str) -> Path:
    """The diffusers-format config directory the checkpoint at ``path`` is converted with."""
    override = config_override(path)
    if (override / "model_index.json").is_file():
        return override
    return SHIPPED_CONFIGS / family


@functools.cache
def _clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's byte-level BPE vocabulary (49408 tokens) and merges, from the shipped merges file."""
    lines = CLIP_MERGES.read_text(encoding="utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:] if line)
    symbols = list(_byte_symbols())
    vocab_list = symbols + [symbol + "</w>" for symbol in symbols]
    vocab_list += ["".join(merge) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab_list)}, merges


def _byte_symbols() -> list[str]:
    """The printable symbol standing for each byte in byte-level BPE, in CLIP's vocabulary order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def clip_tokenizer(pad_token: str):
    """A CLIP tokenizer (77 tokens) with the released vocabulary; SDXL's second one pads with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token=pad_token)


def tokenizers(config: Path) -> dict:
    """The tokenizers to hand ``from_single_file`` when ``config`` has no tokenizer files of its own."""
    index = json.loads((Path(config) / "model_index.json").read_text())
    built = {}
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        if name in index and not (Path(config) / name).is_dir():
            built[name] = clip_tokenizer(pad)
    return built


def load_pipeline(path: Path, family: str, *, device: str, dtype, label: str):
    """The text-to-image pipeline of the single-file checkpoint at ``path``, every component on ``device``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    config = config_dir(path, family)
    extra = (
        {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        if family == "sd15"
        else {}
    )
    try:
        pipe = pipeline_class.from_single_file(
            str(path), config=str(config), local_files_only=True, dtype=dtype, **tokenizers(config), **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise FailedPrecondition(
            f"cannot load model {label} from {path} with the {family} config {config}: {error}"
        ) from error
    missing = [
        f"{name}.{parameter}"
        for name, module in pipe.components.items()
        if hasattr(module, "named_parameters")
        for parameter, value in module.named_parameters()
        if value.is_meta
    ]
    if missing:
        # diffusers leaves a weight the file lacks uninitialised instead of failing.
        raise FailedPrecondition(
            f"cannot load model {label} from {path}: {len(missing)} weights of the {family} config"
            f" {config} are not in the file (e.g. {', '.join(missing[:3])})"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
