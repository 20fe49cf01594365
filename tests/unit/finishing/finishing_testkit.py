"""Helpers of the finishing tests: spec and face builders, deterministic pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multipass.v1 import common_pb2, diffusion_pb2
from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE

__all__ = ["MODELS_ROOT", "SD15_MODEL", "TINY_WORKING_SIZE", "face", "pixels", "scene", "spec"]

#: Shared by every test session on this machine (each factory keeps a version marker and a lock).
MODELS_ROOT = Path(__file__).resolve().parents[3] / ".multipass" / "test-models"


def spec(kind: str, **fields) -> diffusion_pb2.PassSpec:
    values = {
        "kind": kind,
        "model": SD15_MODEL,
        "prompt": "a portrait",
        "steps": 4,
        "cfg_scale": 6.0,
        "seed": 7,
    }
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


def face(box: tuple[float, float, float, float], prompt: str = "", loras=()) -> diffusion_pb2.FaceTarget:
    return diffusion_pb2.FaceTarget(
        box=common_pb2.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]), prompt=prompt, loras=list(loras)
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def scene(width: int = 128, height: int = 96, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: every model changes it visibly."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 200 / width, ys * 200 / height, (xs + ys) * 100 / (width + height) + 60], axis=-1)
    noisy = base + rng.normal(0, 12, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
