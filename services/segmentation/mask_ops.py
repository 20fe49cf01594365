"""Pure mask operations on boolean ``(H, W)`` arrays (numpy + OpenCV, no models, no I/O).

Masks are ``bool`` arrays where True means "repaint". Every function returns a new array and leaves its
inputs untouched. Distances are Euclidean: dilating by ``n`` adds every pixel whose centre lies within
``n`` pixels of the mask; eroding by ``n`` keeps only pixels farther than ``n`` from the background. The
image border is not background, so a mask touching the border does not shrink from it (as ``cv2.erode``).

Order used for prompt masks: ``prompt - negative -> dilate/erode -> invert`` (:func:`prompt_mask`).
Order used for detections (:func:`process_detections`): area-ratio filter -> top-k -> sort -> offset ->
dilate/erode (masks that vanish are dropped and reported) -> merge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from multipass.errors import InvalidInput, Violation

_EPSILON = 1e-6


def as_mask(array: np.ndarray) -> np.ndarray:
    """A boolean mask from bool, 0/255 uint8 (>= 128 is set) or 0..1 float (>= 0.5 is set) arrays."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"a mask is 2-dimensional, got shape {array.shape}")
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.floating):
        return array >= 0.5
    return array >= 128


def to_uint8(mask: np.ndarray) -> np.ndarray:
    """0/255 ``uint8`` image of a boolean mask (what is stored as PNG)."""
    return np.where(as_mask(mask), np.uint8(255), np.uint8(0))


def invert(mask: np.ndarray) -> np.ndarray:
    return ~as_mask(mask)


def subtract(mask: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that are not in ``negative``."""
    mask, negative = as_mask(mask), as_mask(negative)
    _same_shape(mask, negative)
    return mask & ~negative


def merge(masks: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Union of masks; ``shape`` gives the size of the (empty) result when ``masks`` is empty."""
    if not masks:
        if shape is None:
            raise ValueError("merge of no masks needs a shape")
        return np.zeros(shape, dtype=bool)
    result = as_mask(masks[0])
    for other in masks[1:]:
        other = as_mask(other)
        _same_shape(result, other)
        result |= other
    return result


def dilate_erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the mask by ``pixels`` (Euclidean), or shrink it when ``pixels`` is negative."""
    mask = as_mask(mask)
    if pixels == 0 or not mask.any():
        return mask
    if pixels > 0:
        if mask.all():
            return mask
        distance = cv2.distanceTransform(
            np.where(mask, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        return distance <= pixels + _EPSILON
    if mask.all():
        return mask
    # Pad with foreground so the image border does not count as background.
    padded = np.pad(mask, 1, constant_values=True).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return distance > -pixels + _EPSILON


@dataclass(frozen=True)
class Dilation:
    """A dilate (positive) or erode (negative) amount in pixels or in percent of the shorter image side."""

    amount: float
    percent: bool = False

    def to_pixels(self, shape: tuple[int, ...]) -> int:
        if not self.percent:
            return int(round(self.amount))
        shorter = min(shape[0], shape[1])
        return int(round(self.amount / 100.0 * shorter))

    @classmethod
    def parse(cls, text: str, *, field: str = "dilate") -> Dilation:
        """``"12"``, ``"-4"``, ``"5%"``, ``"-2.5%"``."""
        match = re.fullmatch(r"\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*", text)
        if not match:
            raise InvalidInput.of(
                [Violation(field, f"got {text!r}; expected pixels like 12 or -4, or percent like 5%")]
            )
        value, percent = float(match.group(1)), bool(match.group(2))
        if percent and abs(value) > 100:
            raise InvalidInput.of([Violation(field, f"got {text!r}; percent must be within -100%..100%")])
        if not percent and value != int(value):
            raise InvalidInput.of([Violation(field, f"got {text!r}; pixels must be a whole number")])
        return cls(value, percent)

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{int(self.amount)}"


def dilate_erode_by(mask: np.ndarray, dilation: Dilation | None) -> np.ndarray:
    if dilation is None:
        return as_mask(mask)
    return dilate_erode(mask, dilation.to_pixels(mask.shape))


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred mask as ``uint8`` 0..255 (a soft paste mask); ``sigma <= 0`` leaves it hard."""
    hard = to_uint8(mask)
    if sigma <= 0:
        return hard
    blurred = cv2.GaussianBlur(
        hard.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE
    )
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def offset(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift the mask right by ``dx`` and down by ``dy`` pixels; pixels shifted in are unset."""
    mask = as_mask(mask)
    height, width = mask.shape
    result = np.zeros_like(mask)
    if abs(dx) >= width or abs(dy) >= height:
        return result
    src_y = slice(max(0, -dy), height - max(0, dy))
    dst_y = slice(max(0, dy), height - max(0, -dy))
    src_x = slice(max(0, -dx), width - max(0, dx))
    dst_x = slice(max(0, dx), width - max(0, -dx))
    result[dst_y, dst_x] = mask[src_y, src_x]
    return result


def area_fraction(mask: np.ndarray) -> float:
    mask = as_mask(mask)
    return float(mask.sum()) / float(mask.size) if mask.size else 0.0


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` around the set pixels, x1/y1 exclusive; None for an empty mask."""
    mask = as_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Mask of the pixels whose centres lie inside ``box`` (x0, y0, x1, y1; x1/y1 exclusive)."""
    height, width = shape
    x0, y0, x1, y1 = box
    result = np.zeros(shape, dtype=bool)
    c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(width, int(np.ceil(x1 - 0.5)))
    r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(height, int(np.ceil(y1 - 0.5)))
    if c1 > c0 and r1 > r0:
        result[r0:r1, c0:c1] = True
    return result


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_pixels``."""
    mask = as_mask(mask)
    if min_pixels <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def filter_by_area_ratio(
    masks: Sequence[np.ndarray], min_ratio: float = 0.0, max_ratio: float = 1.0
) -> list[int]:
    """Indices of the masks whose area fraction lies within ``[min_ratio, max_ratio]``."""
    return [i for i, mask in enumerate(masks) if min_ratio <= area_fraction(mask) <= max_ratio]


@dataclass(frozen=True)
class DetectionMasks:
    """Result of :func:`process_detections`: surviving masks with their original indices."""

    masks: list[np.ndarray]
    indices: list[int]
    vanished: list[int]
    merged: np.ndarray


def process_detections(
    masks: Sequence[np.ndarray],
    scores: Sequence[float],
    shape: tuple[int, int],
    *,
    min_ratio: float = 0.0,
    max_ratio: float = 1.0,
    top_k: int = 0,
    sort_by: str = "left-to-right",
    dx: int = 0,
    dy: int = 0,
    dilation: Dilation | None = None,
) -> DetectionMasks:
    """Area-ratio filter -> top-k by score -> sort -> offset -> dilate/erode (drop vanished) -> merge.

    ``sort_by`` is ``"left-to-right"``, ``"area"`` (largest first) or ``"score"`` (highest first).
    """
    if len(masks) != len(scores):
        raise ValueError("one score per mask")
    kept = filter_by_area_ratio(masks, min_ratio, max_ratio)
    if top_k > 0:
        kept = sorted(kept, key=lambda i: -scores[i])[:top_k]
    if sort_by == "left-to-right":
        kept.sort(key=lambda i: _centre_x(masks[i]))
    elif sort_by == "area":
        kept.sort(key=lambda i: -int(as_mask(masks[i]).sum()))
    elif sort_by == "score":
        kept.sort(key=lambda i: -scores[i])
    else:
        raise ValueError(f"unknown sort order {sort_by!r}")
    survivors: list[np.ndarray] = []
    indices: list[int] = []
    vanished: list[int] = []
    for i in kept:
        moved = offset(masks[i], dx, dy) if dx or dy else as_mask(masks[i])
        result = dilate_erode_by(moved, dilation)
        if result.any():
            survivors.append(result)
            indices.append(i)
        else:
            vanished.append(i)
    return DetectionMasks(survivors, indices, vanished, merge(survivors, shape))


@dataclass(frozen=True)
class PromptMask:
    """A prompt mask and what happened on the way: ``vanished`` when erosion emptied it."""

    mask: np.ndarray
    empty_before_ops: bool
    vanished: bool


def prompt_mask(
    positive: np.ndarray,
    negative: np.ndarray | None = None,
    *,
    dilation: Dilation | None = None,
    invert_result: bool = False,
) -> PromptMask:
    """``positive - negative`` -> dilate/erode -> invert."""
    mask = subtract(positive, negative) if negative is not None else as_mask(positive)
    empty = not mask.any()
    mask = dilate_erode_by(mask, dilation)
    vanished = not empty and not mask.any()
    if invert_result:
        mask = ~mask
    return PromptMask(mask, empty, vanished)


def _centre_x(mask: np.ndarray) -> float:
    box = bounding_box(mask)
    return (box[0] + box[2]) / 2.0 if box else float("inf")


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
