"""scripts/bench_gpu.py: it refuses the real architectures without a GPU, and the real configs'
shapes checked against the published parameter counts (built on the meta device: no memory, no time).
The whole ``--tiny`` run on CPU is tests/unit/test_gpu_check_scripts.py's, through scripts/gpu_check.sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multipass_bench import gpu

ROOT = Path(__file__).resolve().parents[2]


def test_real_architecture_needs_a_gpu_or_tiny(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run would start")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--tiny" in done.stderr


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        # Published parameter counts of runwayml/stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0.
        (gpu.SD15, {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
        (
            gpu.SDXL,
            {
                "unet": 2_567_463_684,
                "vae": 83_653_863,
                "text_encoder": 123_060_480,
                "text_encoder_2": 694_659_840,
            },
        ),
    ],
    ids=["sd15", "sdxl"],
)
def test_real_configs_have_the_published_shapes(configs, expected):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        found = {
            "unet": _parameters(UNet2DConditionModel(**configs["unet"])),
            "vae": _parameters(AutoencoderKL(**configs["vae"])),
            "text_encoder": _parameters(CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))),
        }
        if "text_encoder_2" in configs:
            found["text_encoder_2"] = _parameters(
                CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
            )
    assert found == expected


def test_native_sizes_and_names():
    assert gpu.NATIVE[("sd15", False)] == 512 and gpu.NATIVE[("sdxl", False)] == 1024
    assert gpu.model_name("sdxl", False) == "sdxl-random"
