"""Crop-inpaint-paste (person and face passes): the geometry, the feather and the paste, as pure functions.

The box maths lives in :mod:`multipass.crop_geometry` (the gateway predicts person crop boxes with the
same code); it is re-exported here. The crop is resized to the working size, whose short side is the
model's working size and whose aspect is the crop's. After inpainting, the result is resized back to the
crop box in pixel space and pasted with the feathered mask: wherever the feathered mask is zero the
original pixels are kept byte for byte.
"""

from __future__ import annotations

import numpy as np

from multipass.crop_geometry import (
    MAX_ASPECT,
    SIZE_MULTIPLE,
    Box,
    crop_box,
    fit_inside,
    grow_box,
    mask_box,
    widen_to_aspect,
    working_size,
)

__all__ = [
    "MAX_ASPECT",
    "SIZE_MULTIPLE",
    "Box",
    "crop_box",
    "feather",
    "fit_inside",
    "grow_box",
    "mask_box",
    "paste",
    "widen_to_aspect",
    "working_size",
]


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
