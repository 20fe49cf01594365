"""Tiny diffusion models, built once per machine under .multipass/test-models, and an engine on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multipass.tiny_models.diffusion import SD15_MODEL, SDXL_MODEL, TINY_WORKING_SIZE, build, write_random_lora
from multipass.v1 import diffusion_pb2

REPO = Path(__file__).resolve().parents[3]
MODELS_ROOT = REPO / ".multipass" / "test-models"


@pytest.fixture(scope="session")
def model_root() -> Path:
    import torch

    torch.set_num_threads(1)
    build(MODELS_ROOT)
    return MODELS_ROOT


@pytest.fixture(scope="session")
def settings(model_root: Path):
    from multipass_diffusion.settings import DiffusionSettings

    return DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(model_root),
            "MULTIPASS_DIFFUSION_DEVICE": "cpu",
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
            "MULTIPASS_DIFFUSION_TORCH_THREADS": "1",
        }
    )


@pytest.fixture(scope="session")
def engine(settings):
    """One engine with both tiny models loaded; tests must leave no adapter active."""
    from multipass_diffusion.engine import Engine

    loaded = Engine(settings)
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def lora_dir(model_root: Path, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("loras")
    sd15 = model_root / "diffusion" / SD15_MODEL
    sdxl = model_root / "diffusion" / SDXL_MODEL
    write_random_lora(sd15, directory / "sd15-a.safetensors", seed=1)
    write_random_lora(sd15, directory / "sd15-b.safetensors", seed=2, kohya=True)
    write_random_lora(sd15, directory / "sd15-unet-only.safetensors", seed=3, text_encoder=False)
    write_random_lora(sdxl, directory / "sdxl-a.safetensors", seed=4)
    return directory


def spec(model: str = SD15_MODEL, **fields) -> diffusion_pb2.PassSpec:
    values = {"kind": "base", "model": model, "prompt": "a red house", "steps": 4, "cfg_scale": 6.0, "seed": 7, "width": 64, "height": 64}
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def scene(width: int = 128, height: int = 96, seed: int = 0) -> Image.Image:
    """A deterministic picture with edges (for canny/mlsd) and noise."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    array[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (220, 200, 40)
    array[:, width - 10 : width - 6] = 255
    return Image.fromarray(array)


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask
