"""Geometry of crop-inpaint-paste (person and face passes): pure functions on boxes and arrays.

The algorithm (A1111's "inpaint only masked" with Impact Pack's crop factor): feather the mask, take the
tight box around the feathered mask, scale it by ``crop_factor`` around its centre and grow it by
``padding`` on every side, enforce a minimum size, widen it to the working aspect, and slide it back inside
the image (clamping only when it is larger than the image). The crop is resized to the working size, whose
short side is the model's working size and whose aspect is the crop's. After inpainting, the result is
resized back to the crop box in pixel space and pasted with the feathered mask: wherever the feathered
mask is zero the original pixels are kept byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Working sizes are multiples of this (the VAE's x8 factor).
SIZE_MULTIPLE = 8
#: The long side of a working size is at most this many times its short side.
MAX_ASPECT = 2.0


@dataclass(frozen=True)
class Box:
    """Integer pixel box; x1/y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def contains(self, other: Box) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"


def mask_box(mask: np.ndarray, threshold: int = 0) -> Box | None:
    """Tight box around the pixels of ``mask`` above ``threshold``; None when there are none."""
    ys, xs = np.nonzero(mask > threshold)
    if xs.size == 0:
        return None
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def grow_box(
    box: Box, *, padding: float, crop_factor: float, min_size: float
) -> tuple[float, float, float, float]:
    """Scale ``box`` by ``crop_factor`` (>= 1) around its centre, pad every side, make each side >= min_size."""
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    factor = max(1.0, crop_factor)
    width = max(box.width * factor + 2 * max(0.0, padding), min_size)
    height = max(box.height * factor + 2 * max(0.0, padding), min_size)
    return cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2


def widen_to_aspect(
    region: tuple[float, float, float, float], aspect: float
) -> tuple[float, float, float, float]:
    """Grow the short dimension of ``region`` (never shrink) until width / height == ``aspect``."""
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if width / height < aspect:
        width = height * aspect
    else:
        height = width / aspect
    return cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2


def fit_inside(region: tuple[float, float, float, float], image_width: int, image_height: int) -> Box:
    """Round ``region`` outwards to pixels and slide it inside the image; clamp a side larger than the image."""
    x0, y0, x1, y1 = math.floor(region[0]), math.floor(region[1]), math.ceil(region[2]), math.ceil(region[3])
    x0, x1 = _slide(x0, x1, image_width)
    y0, y1 = _slide(y0, y1, image_height)
    return Box(x0, y0, x1, y1)


def _slide(start: int, end: int, limit: int) -> tuple[int, int]:
    size = end - start
    if size >= limit:
        return 0, limit
    if start < 0:
        return 0, size
    if end > limit:
        return limit - size, limit
    return start, end


def crop_box(
    alpha: np.ndarray,
    *,
    padding: float,
    crop_factor: float,
    aspect: float,
    min_size: float,
) -> Box | None:
    """The crop around the (feathered) mask ``alpha``; None when the mask is empty."""
    box = mask_box(alpha)
    if box is None:
        return None
    height, width = alpha.shape[:2]
    region = grow_box(box, padding=padding, crop_factor=crop_factor, min_size=min(min_size, width, height))
    region = widen_to_aspect(region, min(max(aspect, 1 / MAX_ASPECT), MAX_ASPECT))
    return fit_inside(region, width, height)


def working_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size to run a ``width`` x ``height`` crop at: short side ``short_side``, same aspect, multiples of 8."""
    short = _round_to_multiple(short_side)
    ratio = min(max(width, height) / max(1, min(width, height)), MAX_ASPECT)
    long = _round_to_multiple(short * ratio)
    return (long, short) if width >= height else (short, long)


def _round_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The paste mask: ``mask`` (uint8, >127 = repaint) binarised and Gaussian-blurred, as uint8."""
    import cv2

    binary = np.where(mask > 127, 255, 0).astype(np.uint8)
    if sigma <= 0:
        return binary
    blurred = cv2.GaussianBlur(
        binary.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT
    )
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def paste(original: np.ndarray, patch: np.ndarray, alpha: np.ndarray, box: Box) -> np.ndarray:
    """Blend ``patch`` (box-sized RGB) over ``original`` inside ``box`` by ``alpha``; elsewhere unchanged."""
    if patch.shape[:2] != (box.height, box.width):
        raise ValueError(f"patch is {patch.shape[1]}x{patch.shape[0]}, box is {box.width}x{box.height}")
    result = original.copy()
    region = result[box.y0 : box.y1, box.x0 : box.x1]
    weight = alpha[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)[..., None] / 255.0
    blended = np.rint(region.astype(np.float32) * (1.0 - weight) + patch.astype(np.float32) * weight)
    blended = np.clip(blended, 0, 255).astype(np.uint8)
    inside = alpha[box.y0 : box.y1, box.x0 : box.x1] > 0
    region[inside] = blended[inside]
    return result
