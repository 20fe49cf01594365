"""The diffusion engine on CUDA in fp16 with the tiny models: every pass kind, LoRA, determinism, cancel.

Skipped without a CUDA device (the only skip in the diffusion tests).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multipass.errors import Cancelled
from multipass.images import encode_png
from multipass.v1 import common_pb2, diffusion_pb2, prompt_pb2
from multipass_dev.tiny_models.diffusion import (
    SD15_MODEL,
    SDXL_MODEL,
    TINY_WORKING_SIZE,
    build,
    write_random_lora,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MODELS_ROOT = Path(__file__).resolve().parents[2] / ".multipass" / "test-models"


@pytest.fixture(scope="module")
def engine():
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.settings import DiffusionSettings

    build(MODELS_ROOT)
    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(MODELS_ROOT),
            "MULTIPASS_DIFFUSION_DEVICE": "cuda",
            "MULTIPASS_DIFFUSION_DTYPE": "float16",
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
        }
    )
    loaded = Engine(settings)
    loaded.load()
    return loaded


def spec(model: str, **fields) -> diffusion_pb2.PassSpec:
    values = {
        "kind": "base",
        "model": model,
        "prompt": "a red house",
        "steps": 6,
        "cfg_scale": 6.0,
        "seed": 5,
        "width": 64,
        "height": 64,
    }
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


def scene() -> Image.Image:
    array = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    array[24:72, 40:88] = (220, 200, 40)
    return Image.fromarray(array)


@pytest.mark.parametrize("model", [SD15_MODEL, SDXL_MODEL])
def test_every_pass_kind_in_fp16(engine, model):
    from multipass_diffusion.passes.context import PassInputs

    assert engine.runtime(model).base.pipe.unet.dtype == torch.float16
    first = engine.run(spec(model))
    assert encode_png(engine.run(spec(model)).image) == encode_png(first.image)
    assert np.asarray(first.image).std() > 0  # no NaN-black image from an fp16 overflow
    image = scene()
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (40, 20, 90, 80))
    engine.run(spec(model, width=0, height=0, denoising_strength=0.6), PassInputs(image=image))
    engine.run(spec(model, controlnet="canny", controlnet_txt2img=True), PassInputs(image=image))
    # The composition adapter: CLIP image encoder and IP-Adapter layers in fp16 on the device.
    composed = engine.run(
        spec(model, controlnet="composition", controlnet_txt2img=True), PassInputs(image=image)
    )
    assert composed.metadata["task"] == "txt2img+composition" and np.asarray(composed.image).std() > 0
    engine.run(spec(model, width=0, height=0), PassInputs(image=image, mask=mask))
    person = engine.run(
        spec(model, kind="person", width=0, height=0, use_lpw=True, prompt="(ohwx man:1.2)"),
        PassInputs(image=image, mask=mask),
    )
    from multipass_diffusion.imaging.crop_inpaint import feather

    outside = feather(np.asarray(mask), 4) == 0
    assert np.array_equal(np.asarray(person.image)[outside], np.asarray(image)[outside])
    assert engine.record_memory() > 0


def test_lora_and_cancel_on_cuda(engine, tmp_path):
    from multipass_diffusion.models import file_sha256
    from multipass_diffusion.passes.context import PassInputs

    lora = write_random_lora(MODELS_ROOT / "diffusion" / SD15_MODEL, tmp_path / "l.safetensors", seed=1)
    tuned = spec(
        SD15_MODEL,
        loras=[prompt_pb2.LoraRef(tune_id="1", weight=1.0, kind="lora")],
        tune_files={"1": common_pb2.ObjectRef(bucket="b", key="k", sha256=file_sha256(lora))},
    )
    base = engine.run(spec(SD15_MODEL))
    assert engine.run(tuned, PassInputs(tune_paths={"1": lora})).image.tobytes() != base.image.tobytes()
    assert engine.run(spec(SD15_MODEL)).image.tobytes() == base.image.tobytes()
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        engine.run(
            spec(SD15_MODEL, steps=50), progress=lambda s, t: cancel.set() if s == 2 else None, cancel=cancel
        )
