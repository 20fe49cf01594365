"""scripts/bench_gpu.py on CPU with tiny configs of the real architectures, and the real configs'
shapes checked against the published parameter counts (built on the meta device: no memory, no time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multipass_bench import gpu

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_reports_raw_and_engine_throughput_for_both_families(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_gpu.py"),
            "--tiny",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--repetitions",
            "1",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tiny"] is True and result["device"] == "cpu"
    assert set(result["families"]) == {"sd15", "sdxl"}
    for family, figures in result["families"].items():
        assert figures["model"] == gpu.model_name(family, True)
        assert figures["raw_its"] > 0 and figures["engine_its"] > 0
        assert figures["engine_over_raw"] > 0
        assert figures["engine_over_raw"] == pytest.approx(figures["ratios"][0], rel=1e-3)
        job = figures["two_person_job"]
        assert set(job["cold_passes"]) == {"base", "person-0", "person-1"}
        assert job["cold_seconds"] > 0 and job["warm_seconds"] > 0
        assert figures["lora_switch"]["disk_fraction"] > 0 and figures["lora_switch_fraction"] > 0
        batched = figures["batched_base"]
        assert batched["images"] == gpu.BATCH_IMAGES and len(batched["batched_seconds"]) == 1
        assert batched["speedup"] == pytest.approx(batched["ratios"][0], rel=1e-3)
        assert batched["images_per_s_batched"] > 0 and batched["images_per_s_sequential"] > 0
        model_dir = tmp_path / "diffusion" / figures["model"]
        assert (model_dir / "model_index.json").is_file()
    assert (tmp_path / "diffusion" / "sdxl-tinycfg" / "text_encoder_2").is_dir()
    for key in ("python", "torch", "diffusers", "transformers", "multipass"):
        assert result["versions"][key]


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
