"""Crop-box geometry of crop-inpaint-paste passes, shared by the diffusion worker and the gateway (pure).

The worker crops around a person's (or face's) feathered mask with :func:`crop_box`; the gateway predicts
the same box from the mask's tight box (the Segment response) to decide which person passes may run at the
same time (``multipass_gateway.domain.person_stages``). One implementation serves both, so the prediction
cannot drift from what the worker does.

The algorithm (A1111's "inpaint only masked" with Impact Pack's crop factor): take the tight box around the
feathered mask, scale it by ``crop_factor`` around its centre and grow it by ``padding`` on every side,
enforce a minimum size, widen it to the working aspect, and slide it back inside the image (clamping only
when it is larger than the image). Every step is monotone: a larger starting box gives a crop box that
contains the smaller one's, which is what lets the gateway work from an upper bound of the feathered box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Working sizes are multiples of this (the VAE's x8 factor).
SIZE_MULTIPLE = 8
#: The long side of a working size is at most this many times its short side.
MAX_ASPECT = 2.0
#: Person passes: context padding (pixels) when the spec leaves ``crop_padding`` at 0.
PERSON_DEFAULT_PADDING = 32
#: Person passes: the crop's sides are at least this fraction of the working size (tiny masks get
#: context, not x100 zoom).
PERSON_MIN_CROP_FRACTION = 0.25
#: Feather sigma when a spec leaves ``mask_blur`` at 0 (a negative value means no feathering).
DEFAULT_MASK_BLUR = 4.0


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

    def intersects(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

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


def crop_box_around(
    box: Box,
    image_width: int,
    image_height: int,
    *,
    padding: float,
    crop_factor: float,
    aspect: float,
    min_size: float,
) -> Box:
    """The crop around the tight box ``box`` of a feathered mask in an ``image_width`` x ``image_height`` image."""
    region = grow_box(
        box, padding=padding, crop_factor=crop_factor, min_size=min(min_size, image_width, image_height)
    )
    region = widen_to_aspect(region, min(max(aspect, 1 / MAX_ASPECT), MAX_ASPECT))
    return fit_inside(region, image_width, image_height)


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
    return crop_box_around(
        box, width, height, padding=padding, crop_factor=crop_factor, aspect=aspect, min_size=min_size
    )


def person_crop_box(
    feathered: Box,
    image_width: int,
    image_height: int,
    *,
    crop_padding: int,
    crop_factor: float,
    spec_width: int,
    spec_height: int,
    working_size: int,
) -> Box:
    """The person pass's crop box around the tight box of its feathered mask (spec defaults applied)."""
    aspect = spec_width / spec_height if spec_width and spec_height else image_width / image_height
    return crop_box_around(
        feathered,
        image_width,
        image_height,
        padding=crop_padding or PERSON_DEFAULT_PADDING,
        crop_factor=crop_factor or 1.0,
        aspect=aspect,
        min_size=working_size * PERSON_MIN_CROP_FRACTION,
    )


def feather_sigma(mask_blur: float) -> float:
    """Feather sigma of a spec's ``mask_blur``: 0 = default, negative = none."""
    if mask_blur < 0:
        return 0.0
    return mask_blur or DEFAULT_MASK_BLUR


def feather_reach(sigma: float) -> int:
    """How far (pixels) the feathered mask can reach beyond the binary mask's tight box; an upper bound.

    The feather is a Gaussian blur whose kernel OpenCV truncates at ``ksize // 2`` pixels
    (``ksize = round(8 * sigma + 1) | 1`` for float images), so no blurred value is non-zero further out.
    """
    if sigma <= 0:
        return 0
    return (int(round(8 * sigma + 1)) | 1) // 2


def grown_box(box: Box, margin: int, image_width: int, image_height: int) -> Box:
    """``box`` grown by ``margin`` on every side, clipped to the image."""
    return Box(
        max(0, box.x0 - margin),
        max(0, box.y0 - margin),
        min(image_width, box.x1 + margin),
        min(image_height, box.y1 + margin),
    )


def working_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size to run a ``width`` x ``height`` crop at: short side ``short_side``, same aspect, multiples of 8."""
    short = _round_to_multiple(short_side)
    ratio = min(max(width, height) / max(1, min(width, height)), MAX_ASPECT)
    long = _round_to_multiple(short * ratio)
    return (long, short) if width >= height else (short, long)


def _round_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
