"""Colour grading looks, "Film Velvia", "Film Portra" and "Ektar", as 3D LUTs generated in code (numpy).

Each look is a :class:`Look`: a chain of simple, documented operations on sRGB-encoded values in 0..1.

1. white balance: per-channel gains;
2. tone curve on each channel: ``g(x) = x - contrast * sin(2 pi x) / (2 pi)`` (an S-curve for
   ``contrast > 0`` that keeps 0 and 1 and is steeper by ``1 + contrast`` at mid grey; a flattening
   curve for ``contrast < 0``), then mapped onto ``black .. white`` (lifted blacks, rolled-off whites);
3. saturation around Rec. 709 luma: ``Y + saturation * (c - Y)``;
4. split toning: ``shadow_tint * (1 - Y)^2 + highlight_tint * Y^2`` added per channel;
5. clip to 0..1.

The chain is sampled on a 33 x 33 x 33 grid (:func:`build_lut`) and applied with trilinear
interpolation (:func:`apply_lut`), like a ``.cube`` LUT in a grading tool. Everything is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LUT_SIZE = 33
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)


@dataclass(frozen=True)
class Look:
    name: str
    description: str
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 0.0
    black: float = 0.0
    white: float = 1.0
    saturation: float = 1.0
    shadow_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    highlight_tint: tuple[float, float, float] = (0.0, 0.0, 0.0)


LOOKS: dict[str, Look] = {
    look.name: look
    for look in (
        Look(
            "Film Velvia",
            "Fujichrome Velvia slide film: strongly saturated, high contrast with deep blacks, slightly "
            "cool and magenta (blues and greens pop)",
            gains=(1.0, 0.985, 1.02),
            contrast=0.35,
            saturation=1.45,
            shadow_tint=(-0.005, -0.01, 0.02),
        ),
        Look(
            "Film Portra",
            "Kodak Portra portrait negative: warm, low contrast with lifted blacks and soft highlights, "
            "gentle saturation (flattering skin)",
            gains=(1.05, 1.0, 0.92),
            contrast=-0.25,
            black=0.04,
            white=0.97,
            saturation=0.82,
            highlight_tint=(0.015, 0.008, -0.015),
        ),
        Look(
            "Ektar",
            "Kodak Ektar 100 negative: vivid saturation and punchy contrast, warm highlights over cool "
            "shadows",
            gains=(1.02, 1.0, 0.99),
            contrast=0.25,
            saturation=1.3,
            shadow_tint=(-0.025, 0.0, 0.03),
            highlight_tint=(0.03, 0.01, -0.025),
        ),
    )
}


def look_named(name: str) -> Look | None:
    """The look called ``name`` (case and surrounding spaces ignored), or None."""
    wanted = " ".join(name.split()).lower()
    for look in LOOKS.values():
        if look.name.lower() == wanted:
            return look
    return None


def tone_curve(x: np.ndarray, contrast: float, black: float, white: float) -> np.ndarray:
    curved = x - contrast * np.sin(2.0 * math.pi * x) / (2.0 * math.pi)
    return black + (white - black) * curved


def transform(rgb: np.ndarray, look: Look) -> np.ndarray:
    """The look applied to ``rgb`` (float, ... x 3, 0..1): the exact chain the LUT samples."""
    values = np.asarray(rgb, dtype=np.float64) * np.asarray(look.gains)
    values = tone_curve(np.clip(values, 0.0, 1.0), look.contrast, look.black, look.white)
    luma = values @ LUMA
    values = luma[..., None] + look.saturation * (values - luma[..., None])
    shadows = (1.0 - np.clip(luma, 0.0, 1.0))[..., None] ** 2
    highlights = np.clip(luma, 0.0, 1.0)[..., None] ** 2
    values = values + shadows * np.asarray(look.shadow_tint) + highlights * np.asarray(look.highlight_tint)
    return np.clip(values, 0.0, 1.0)


@lru_cache(maxsize=8)
def build_lut(look: Look, size: int = LUT_SIZE) -> np.ndarray:
    """``size``^3 x 3 float32 LUT indexed [r, g, b]."""
    axis = np.linspace(0.0, 1.0, size)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    lut = transform(grid, look).astype(np.float32)
    lut.setflags(write=False)
    return lut


def apply_lut(image: np.ndarray, lut: np.ndarray, *, rows_per_chunk: int = 256) -> np.ndarray:
    """``image`` (uint8 H x W x 3) through ``lut`` with trilinear interpolation; uint8 out."""
    size = lut.shape[0]
    result = np.empty_like(image)
    for start in range(0, image.shape[0], rows_per_chunk):
        chunk = image[start : start + rows_per_chunk].astype(np.float32) * ((size - 1) / 255.0)
        low = np.minimum(np.floor(chunk).astype(np.int32), size - 2)
        frac = chunk - low
        r0, g0, b0 = low[..., 0], low[..., 1], low[..., 2]
        fr, fg, fb = frac[..., 0:1], frac[..., 1:2], frac[..., 2:3]
        out = np.zeros(chunk.shape, dtype=np.float32)
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dg, wg in ((0, 1 - fg), (1, fg)):
                for db, wb in ((0, 1 - fb), (1, fb)):
                    out += wr * wg * wb * lut[r0 + dr, g0 + dg, b0 + db]
        result[start : start + rows_per_chunk] = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return result


def color_grade(image: np.ndarray, look: Look) -> np.ndarray:
    return apply_lut(image, build_lut(look))
