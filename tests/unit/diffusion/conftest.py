"""Tiny diffusion models, built once per machine under .multipass/test-models, and an engine on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusion_testkit import MODELS_ROOT, SD15_MODEL, SDXL_MODEL, TINY_WORKING_SIZE

from multipass_dev.tiny_models.diffusion import build, write_random_lora


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
