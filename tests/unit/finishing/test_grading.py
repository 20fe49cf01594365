"""Colour grading looks on a colour chart: each moves the chart the documented way; LUTs are exact."""

from __future__ import annotations

import numpy as np
import pytest

from multipass_diffusion.imaging.grading import (
    LOOKS,
    Look,
    apply_lut,
    build_lut,
    color_grade,
    look_named,
    transform,
)

#: sRGB values of the 24 ColorChecker Classic patches, row by row (the last row is the grey scale).
CHART = [
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
]  # fmt: skip
PATCH = 12


def chart() -> np.ndarray:
    image = np.zeros((4 * PATCH, 6 * PATCH, 3), np.uint8)
    for index, colour in enumerate(CHART):
        row, column = divmod(index, 6)
        image[row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] = colour
    return image


def patches(image: np.ndarray) -> np.ndarray:
    """Mean colour of every patch (24 x 3, float)."""
    return np.array(
        [
            image[r * PATCH + 2 : (r + 1) * PATCH - 2, c * PATCH + 2 : (c + 1) * PATCH - 2]
            .reshape(-1, 3)
            .mean(0)
            for r in range(4)
            for c in range(6)
        ]
    )


def chroma(values: np.ndarray) -> float:
    return float((values.max(axis=1) - values.min(axis=1))[:18].mean())


def luma_spread(values: np.ndarray) -> float:
    return float((values @ np.array([0.2126, 0.7152, 0.0722])).std())


def warmth(values: np.ndarray) -> np.ndarray:
    """Red minus blue of every patch: on the neutral patches (18..23) it is the colour cast."""
    return values[:, 0] - values[:, 2]


@pytest.fixture(scope="module")
def before() -> np.ndarray:
    return patches(chart())


def graded(name: str) -> np.ndarray:
    return patches(color_grade(chart(), LOOKS[name]))


def test_velvia_is_more_saturated_and_more_contrasty(before):
    after = graded("Film Velvia")
    assert chroma(after) > 1.25 * chroma(before)
    assert luma_spread(after) > 1.08 * luma_spread(before)


def test_portra_is_warmer_softer_and_lower_in_contrast(before):
    after = graded("Film Portra")
    assert warmth(after)[18:].mean() > warmth(before)[18:].mean() + 8  # greys take a warm cast
    assert (warmth(after)[18:] > warmth(before)[18:]).all()
    assert luma_spread(after) < 0.92 * luma_spread(before)
    assert chroma(after) < chroma(before)
    assert after[23].mean() > before[23].mean() + 3  # lifted blacks
    assert after[18].mean() < before[18].mean()  # softened highlights


def test_ektar_is_vivid_and_punchy_with_warm_highlights_and_cool_shadows(before):
    after = graded("Ektar")
    assert chroma(after) > 1.15 * chroma(before)
    assert luma_spread(after) > 1.05 * luma_spread(before)
    assert warmth(after)[18] > warmth(before)[18] + 3  # white patch warmer
    assert warmth(after)[23] < warmth(before)[23] - 3  # black patch cooler


@pytest.mark.parametrize("name", sorted(LOOKS))
def test_grading_is_deterministic_and_keeps_the_size(name):
    image = chart()
    first = color_grade(image, LOOKS[name])
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, color_grade(image, LOOKS[name]))
    assert not np.array_equal(first, image)


@pytest.mark.parametrize("name", sorted(LOOKS))
def test_the_lut_reproduces_the_documented_transform(name):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    exact = transform(image / 255.0, LOOKS[name]) * 255.0
    through_lut = apply_lut(image, build_lut(LOOKS[name]))
    assert np.abs(through_lut - exact).max() <= 3.0
    assert np.abs(through_lut - exact).mean() <= 0.6


def test_a_neutral_look_changes_nothing_and_lut_chunks_do_not_matter():
    image = np.random.default_rng(2).integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    lut = build_lut(Look("neutral", "identity"))
    assert np.array_equal(apply_lut(image, lut), image)
    velvia = build_lut(LOOKS["Film Velvia"])
    assert np.array_equal(apply_lut(image, velvia, rows_per_chunk=7), apply_lut(image, velvia))


def test_look_names_ignore_case_and_spacing():
    assert look_named(" film  velvia ") is LOOKS["Film Velvia"]
    assert look_named("EKTAR") is LOOKS["Ektar"]
    assert look_named("Kodachrome") is None
