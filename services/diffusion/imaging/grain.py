"""Film grain: seeded, luminance-aware, zero-mean noise (pure numpy).

The grain field is white Gaussian noise from ``numpy.random.default_rng(seed)`` (PCG64: the same seed
gives the same grain on every machine), optionally blurred by a Gaussian of ``size`` pixels (coarser
grain) and rescaled to unit standard deviation. Its amplitude at a pixel is
``strength * MAX_LEVELS * 4 * L * (1 - L)`` 8-bit levels, where ``L`` is the pixel's luma (Rec. 709
weights, 0..1): full in the midtones, vanishing towards pure black and pure white, as silver grain shows
most in the midtones of a print and clipping never biases the mean. The same monochrome grain is added
to the three channels; ``chroma`` mixes in independent per-channel noise of that relative amplitude.
"""

from __future__ import annotations

import numpy as np

#: Grain standard deviation in 8-bit levels at mid grey for strength 1.
MAX_LEVELS = 24.0
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def midtone_weight(luma: np.ndarray) -> np.ndarray:
    """Grain amplitude by luma (0..1): 4 L (1 - L), 1 at mid grey, 0 at black and white."""
    return 4.0 * luma * (1.0 - luma)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], size: float) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    if size > 0:
        import cv2

        noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=size, sigmaY=size, borderType=cv2.BORDER_REFLECT)
        std = float(noise.std())
        if std > 0:
            noise /= std
    return noise


def film_grain(
    image: np.ndarray, *, strength: float, seed: int, size: float = 0.7, chroma: float = 0.0
) -> np.ndarray:
    """``image`` (uint8 H x W x 3) with grain; the same arguments always give the same bytes."""
    if strength <= 0:
        return image.copy()
    rng = np.random.default_rng(int(seed))
    height, width = image.shape[:2]
    values = image.astype(np.float32)
    amplitude = strength * MAX_LEVELS * midtone_weight(values @ LUMA / 255.0)
    grain = _noise(rng, (height, width), size)[..., None] * np.ones(3, np.float32)
    if chroma > 0:
        colour = np.stack([_noise(rng, (height, width), size) for _ in range(3)], axis=-1)
        grain = (1.0 - chroma) * grain + chroma * colour
    result = values + grain * amplitude[..., None]
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)
