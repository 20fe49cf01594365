"""Film grain: deterministic for a seed, zero-mean, strongest in the midtones."""

from __future__ import annotations

import numpy as np

from multipass_diffusion.imaging.grain import film_grain, midtone_weight


def bands() -> np.ndarray:
    """Three flat bands: shadows (20), mid grey (128), highlights (235)."""
    image = np.zeros((96, 192, 3), np.uint8)
    image[:, :64] = 20
    image[:, 64:128] = 128
    image[:, 128:] = 235
    return image


def gradient() -> np.ndarray:
    ramp = np.tile(np.linspace(10, 245, 256), (128, 1))
    return np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)


def test_same_seed_same_bytes_other_seed_other_grain():
    image = gradient()
    first = film_grain(image, strength=0.5, seed=11)
    assert np.array_equal(first, film_grain(image, strength=0.5, seed=11))
    assert not np.array_equal(first, film_grain(image, strength=0.5, seed=12))
    assert not np.array_equal(first, image)


def test_mean_is_preserved():
    image = gradient()
    grained = film_grain(image, strength=0.8, seed=3)
    assert abs(grained.astype(np.float64).mean() - image.astype(np.float64).mean()) < 0.3
    for column in (32, 128, 224):
        band = grained[:, column - 8 : column + 8].astype(np.float64)
        assert abs(band.mean() - image[:, column - 8 : column + 8].mean()) < 1.5


def test_grain_is_stronger_in_the_midtones():
    image = bands()
    difference = film_grain(image, strength=0.6, seed=5, size=0.0).astype(np.float64) - image
    shadows, mids, highlights = (difference[:, a : a + 64].std() for a in (0, 64, 128))
    assert mids > 2.5 * shadows and mids > 2.5 * highlights
    assert 0.8 * 0.6 * 24 < mids < 1.2 * 0.6 * 24


def test_strength_scales_the_grain_and_zero_is_the_identity():
    image = bands()
    weak = film_grain(image, strength=0.2, seed=5, size=0.0).astype(np.float64) - image
    strong = film_grain(image, strength=0.6, seed=5, size=0.0).astype(np.float64) - image
    assert 2.5 < strong[:, 64:128].std() / weak[:, 64:128].std() < 3.5
    assert np.array_equal(film_grain(image, strength=0.0, seed=5), image)


def test_grain_size_makes_neighbouring_pixels_correlated():
    image = np.full((128, 128, 3), 128, np.uint8)

    def neighbour_correlation(size: float) -> float:
        noise = film_grain(image, strength=0.8, seed=9, size=size)[..., 0].astype(np.float64) - 128
        return float(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1])

    assert abs(neighbour_correlation(0.0)) < 0.1
    assert neighbour_correlation(1.5) > 0.6


def test_monochrome_grain_is_the_same_on_every_channel_and_chroma_differs():
    image = np.full((32, 32, 3), 128, np.uint8)
    mono = film_grain(image, strength=0.5, seed=1)
    assert np.array_equal(mono[..., 0], mono[..., 1]) and np.array_equal(mono[..., 1], mono[..., 2])
    colour = film_grain(image, strength=0.5, seed=1, chroma=0.5)
    assert not np.array_equal(colour[..., 0], colour[..., 2])


def test_midtone_weight_peaks_at_mid_grey():
    values = midtone_weight(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_allclose(values, [0.0, 0.75, 1.0, 0.75, 0.0])
