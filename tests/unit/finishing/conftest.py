"""Tiny diffusion + finishing models (built once per machine under .multipass/test-models) and an engine.

The engine serves only the tiny SD1.5 model; it runs the finishing passes from its pass registry
(``multipass_diffusion.passes.registry``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from finishing_testkit import MODELS_ROOT, SD15_MODEL, TINY_WORKING_SIZE

from multipass_dev.tiny_models import finishing as tiny_finishing
from multipass_dev.tiny_models.diffusion import build as build_diffusion


@pytest.fixture(scope="session")
def model_root() -> Path:
    import torch

    torch.set_num_threads(1)
    build_diffusion(MODELS_ROOT)
    tiny_finishing.build(MODELS_ROOT)
    return MODELS_ROOT


@pytest.fixture(scope="session")
def engine(model_root: Path):
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.settings import DiffusionSettings

    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(model_root),
            "MULTIPASS_DIFFUSION_MODELS": SD15_MODEL,
            "MULTIPASS_DIFFUSION_DEVICE": "cpu",
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
            "MULTIPASS_DIFFUSION_TORCH_THREADS": "1",
        }
    )
    loaded = Engine(settings)
    loaded.load()
    return loaded
