"""The real SD1.5 and SDXL architectures at full size, random weights, one pass each, through the production
loading code: from a diffusers directory and from the same weights as one A1111-layout checkpoint file.

A shape or key-name bug that only the real sizes show (a config value, a converter's name table) fails
here without any download. Heavy (SDXL: 3.5 G parameters, 7 GB in bfloat16 on disk and in memory): it
runs with ``MULTIPASS_FULL_SIZE=1`` (``MULTIPASS_FULL_SIZE=1 make test``) and on any machine with a CUDA
device (the GPU check; ``MULTIPASS_FULL_SIZE=0`` turns it off there), on CUDA in float16, else on the CPU
in bfloat16.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from multipass.v1 import diffusion_pb2


def _wanted() -> bool:
    setting = os.environ.get("MULTIPASS_FULL_SIZE", "")
    if setting in ("0", "1"):
        return setting == "1"
    import torch

    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        not _wanted(), reason="full-size models: set MULTIPASS_FULL_SIZE=1 (on by default with CUDA)"
    ),
]

#: (family, image side of the pass): small images, one step: the point is every weight and shape.
CASES = [("sd15", 256), ("sdxl", 256)]


def _device_and_dtype() -> tuple[str, str]:
    import torch

    return ("cuda", "float16") if torch.cuda.is_available() else ("cpu", "bfloat16")


def _engine(model_dir: Path, name: str):
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.settings import DiffusionSettings

    device, dtype = _device_and_dtype()
    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(model_dir),
            "MULTIPASS_DIFFUSION_MODELS": name,
            "MULTIPASS_DIFFUSION_DEVICE": device,
            "MULTIPASS_DIFFUSION_DTYPE": dtype,
        }
    )
    engine = Engine(settings)
    engine.load()
    return engine


def _one_pass(model_dir: Path, name: str, side: int) -> tuple[np.ndarray, dict]:
    engine = _engine(model_dir, name)
    runtime = engine.runtime(name)
    sizes = {
        "unet": sum(p.numel() for p in runtime.base.pipe.unet.parameters()),
        "family": runtime.family,
    }
    spec = diffusion_pb2.PassSpec(
        kind="base", model=name, prompt="a red house", steps=1, cfg_scale=5.0, seed=3, width=side, height=side
    )
    image = np.asarray(engine.run(spec).image.convert("RGB"))
    del engine, runtime
    gc.collect()
    return image, sizes


@pytest.mark.parametrize(("family", "side"), CASES)
def test_the_real_architecture_loads_and_runs_a_pass_from_diffusers_files_and_from_one_checkpoint(
    tmp_path, family, side
):
    import torch

    from multipass_dev.tiny_models.full_size import write_random_pipeline
    from multipass_dev.tiny_models.single_file import write_single_file

    dtype = torch.float16 if torch.cuda.is_available() else torch.bfloat16
    started = time.monotonic()
    model_dir, single_dir = tmp_path / "models", tmp_path / "single"
    try:
        write_random_pipeline(family, model_dir / "diffusion" / family, dtype=dtype, seed=1)
        image, sizes = _one_pass(model_dir, family, side)
        expected_unet = {"sd15": 859_520_964, "sdxl": 2_567_463_684}[family]
        assert sizes == {"unet": expected_unet, "family": family}
        assert image.shape == (side, side, 3)

        # The same weights as one A1111/civitai file, converted with the shipped config of its family.
        write_single_file(
            model_dir / "diffusion" / family, single_dir / "diffusion" / f"{family}-file.safetensors"
        )
        shutil.rmtree(model_dir)
        single_image, single_sizes = _one_pass(single_dir, f"{family}-file", side)
        assert single_sizes == sizes
        assert np.array_equal(single_image, image)
        print(f"\n{family}: {time.monotonic() - started:.0f} s on {_device_and_dtype()}")
    finally:
        # Gigabytes of weights: not left in pytest's kept temporary directories.
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(single_dir, ignore_errors=True)
