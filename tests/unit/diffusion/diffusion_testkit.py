"""Helpers of the diffusion tests: spec builders and deterministic pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multipass.bus import Delivery
from multipass.v1 import diffusion_pb2
from multipass_dev.tiny_models.diffusion import SD15_MODEL, SDXL_MODEL, TINY_WORKING_SIZE

__all__ = [
    "MODELS_ROOT",
    "SD15_MODEL",
    "SDXL_MODEL",
    "TINY_WORKING_SIZE",
    "box_mask",
    "pixels",
    "scene",
    "spec",
]

#: Shared by every test session on this machine (the factory keeps a version marker and a lock).
MODELS_ROOT = Path(__file__).resolve().parents[3] / ".multipass" / "test-models"


def spec(model: str = SD15_MODEL, **fields) -> diffusion_pb2.PassSpec:
    values = {
        "kind": "base",
        "model": model,
        "prompt": "a red house",
        "steps": 4,
        "cfg_scale": 6.0,
        "seed": 7,
        "width": 64,
        "height": 64,
    }
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


def pass_delivery(
    request: diffusion_pb2.PassRequest, num_delivered: int, max_deliver: int = 5, msg_id: str = "J9:0:base:0"
) -> Delivery:
    """``request`` as a worker receives it: its ``num_delivered``-th delivery of ``max_deliver``."""
    return Delivery(
        data=request.SerializeToString(),
        subject=f"multipass.pass.diffusion.{SD15_MODEL}",
        headers={},
        num_delivered=num_delivered,
        msg_id=msg_id,
        stream_sequence=1,
        max_deliver=max_deliver,
    )
