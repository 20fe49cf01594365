"""What the engine benchmarks run: tiny models, an engine on them, pass specs, masks, pictures, LoRAs.

The engine is the production one (``multipass_diffusion.engine.Engine``) loading the tiny random-weight
models of the real SD1.5 architecture through the production loading code; only the sizes are small.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

#: The bench's directory (models, LoRAs, the stack's state); ``MULTIPASS_BENCH_DIR`` overrides it.
BENCH_DIR_ENV = "MULTIPASS_BENCH_DIR"
SD15 = "sd15-tiny"
#: Short side of person crops for SD1.5 (the real working size; the bench keeps it where ratios depend on it).
SD15_WORKING_SIZE = 512


def bench_dir(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(BENCH_DIR_ENV) or ".multipass/bench").absolute()


def ensure_models(root: Path, *, segmentation: bool = False) -> Path:
    """Build the tiny models under ``root`` once (diffusion; with ``segmentation`` every tiny model)."""
    if segmentation:
        from multipass_dev.tiny_models import build_tiny_models

        build_tiny_models(root)
    else:
        from multipass_dev.tiny_models.diffusion import build

        build(root)
    return root


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def make_engine(
    model_root: Path,
    *,
    working_size: int = SD15_WORKING_SIZE,
    threads: int = 1,
    models: tuple[str, ...] = (SD15,),
    cache=None,
):
    """A loaded engine on the tiny models (CPU, float32, ``threads`` torch threads)."""
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.settings import DiffusionSettings

    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(model_root),
            "MULTIPASS_DIFFUSION_DEVICE": "cpu",
            "MULTIPASS_DIFFUSION_MODELS": ",".join(models),
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(working_size),
            "MULTIPASS_DIFFUSION_TORCH_THREADS": str(threads),
            "MULTIPASS_DIFFUSION_PASS_CACHE": "off",
        }
    )
    engine = Engine(settings, cache=cache)
    engine.load()
    return engine


@contextmanager
def working_size(engine, size: int) -> Iterator[None]:
    """Run ``engine`` with another person-crop working size for a while (its settings are read per pass)."""
    previous = engine.settings
    engine.settings = replace(previous, working_size=size)
    try:
        yield
    finally:
        engine.settings = previous


@contextmanager
def pass_cache(engine, cache) -> Iterator[None]:
    previous = engine.cache
    engine.cache = cache
    try:
        yield
    finally:
        engine.cache = previous


def spec(**fields):
    """A PassSpec with the bench's defaults (SD1.5 tiny, 20 steps, cfg 7, seed 1)."""
    from multipass.v1 import diffusion_pb2

    values = {
        "kind": "base",
        "model": SD15,
        "prompt": "a grand ballroom at a gala, crystal chandeliers, candid photo",
        "negative_prompt": "blurry, lowres",
        "steps": 20,
        "cfg_scale": 7.0,
        "seed": 1,
    }
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


@dataclass(frozen=True)
class Lora:
    tune_id: str
    path: Path
    sha256: str
    weight: float = 1.0


def write_loras(model_root: Path, directory: Path, count: int = 2) -> list[Lora]:
    """``count`` random-weight LoRAs (non-zero A and B) for the tiny SD1.5 model."""
    from multipass_dev.tiny_models.diffusion import write_random_lora

    loras = []
    for index in range(count):
        path = directory / f"bench-lora-{index}.safetensors"
        if not path.exists():
            write_random_lora(model_root / "diffusion" / SD15, path, seed=500 + index)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        loras.append(Lora(f"90000{index}", path, sha))
    return loras


def with_lora(pass_spec, lora: Lora):
    """``pass_spec`` with ``lora`` active (its LoraRef and tune file entry)."""
    pass_spec.loras.add(tune_id=lora.tune_id, weight=lora.weight, kind="lora", tag=f"<lora:{lora.tune_id}>")
    ref = pass_spec.tune_files[lora.tune_id]
    ref.bucket, ref.key, ref.sha256 = (
        "multipass-tunes",
        f"tunes/bench/{lora.tune_id}/lora.safetensors",
        lora.sha256,
    )
    return pass_spec


def inputs(image=None, mask=None, loras: list[Lora] = ()):
    from multipass_diffusion.passes.context import PassInputs

    return PassInputs(image=image, mask=mask, tune_paths={lora.tune_id: lora.path for lora in loras})


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) inside ``box`` = (x0, y0, x1, y1), black elsewhere."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def area_box(size: tuple[int, int], fraction: float, *, aspect: float = 0.52, centre_x: float = 0.5):
    """A standing-figure box (width/height = ``aspect``) covering ``fraction`` of the image."""
    width, height = size
    area = fraction * width * height
    box_h = min(height, round((area / aspect) ** 0.5))
    box_w = min(width, round(area / box_h))
    x0 = max(0, min(width - box_w, round(centre_x * width - box_w / 2)))
    y0 = (height - box_h) // 2
    return x0, y0, x0 + box_w, y0 + box_h


def scene(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A deterministic picture with structure (stands in for a base pass output)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.stack(
        [(xs * 255 // max(1, width - 1)), (ys * 255 // max(1, height - 1)), ((xs + ys) % 97) * 2], axis=-1
    ).astype(np.int16)
    array += rng.integers(-12, 12, size=array.shape, dtype=np.int16)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
