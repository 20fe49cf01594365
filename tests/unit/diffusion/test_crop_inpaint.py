"""Crop-inpaint geometry: boxes, context, aspect widening, image edges, tiny and huge masks, paste."""

from __future__ import annotations

import numpy as np
import pytest

from multipass_diffusion.imaging.crop_inpaint import (
    Box,
    crop_box,
    feather,
    fit_inside,
    grow_box,
    mask_box,
    paste,
    widen_to_aspect,
    working_size,
)


def mask_with(box: tuple[int, int, int, int], size=(200, 100)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 255
    return mask


def test_mask_box_is_tight_and_exclusive():
    assert mask_box(mask_with((10, 20, 30, 25))) == Box(10, 20, 30, 25)
    assert mask_box(np.zeros((5, 5), np.uint8)) is None


def test_grow_box_applies_crop_factor_then_padding_around_the_centre():
    x0, y0, x1, y1 = grow_box(Box(40, 40, 60, 50), padding=5, crop_factor=2.0, min_size=0)
    assert (x1 - x0, y1 - y0) == (50, 30)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (50, 45)


def test_grow_box_enforces_a_minimum_size():
    x0, y0, x1, y1 = grow_box(Box(50, 50, 51, 51), padding=0, crop_factor=1.0, min_size=16)
    assert (x1 - x0, y1 - y0) == (16, 16)


@pytest.mark.parametrize("aspect", [0.5, 1.0, 1.5, 2.0])
def test_widen_to_aspect_only_grows(aspect):
    region = (10.0, 10.0, 50.0, 30.0)
    x0, y0, x1, y1 = widen_to_aspect(region, aspect)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(aspect)
    assert x1 - x0 >= 40 and y1 - y0 >= 20


def test_fit_inside_slides_without_shrinking_at_every_edge():
    assert fit_inside((-10, -5, 30, 25), 100, 80) == Box(0, 0, 40, 30)
    assert fit_inside((80, 60, 120, 90), 100, 80) == Box(60, 50, 100, 80)


def test_fit_inside_clamps_a_box_larger_than_the_image():
    assert fit_inside((-50, 10, 150, 30), 100, 80) == Box(0, 10, 100, 30)


def test_crop_box_contains_the_mask_with_padding_and_the_aspect():
    mask = mask_with((90, 40, 110, 60))
    box = crop_box(mask, padding=10, crop_factor=1.0, aspect=1.0, min_size=0)
    assert box.contains(Box(80, 30, 120, 70))
    assert box.width == box.height == 40


def test_crop_box_at_the_image_corner_stays_inside():
    mask = mask_with((0, 0, 8, 8))
    box = crop_box(mask, padding=20, crop_factor=1.5, aspect=2.0, min_size=0)
    assert box.x0 == 0 and box.y0 == 0
    assert box.contains(Box(0, 0, 8, 8))
    assert box.x1 <= 200 and box.y1 <= 100
    assert box.width / box.height == pytest.approx(2.0, rel=0.05)


def test_tiny_mask_gets_the_minimum_crop():
    mask = mask_with((100, 50, 101, 51))
    box = crop_box(mask, padding=0, crop_factor=1.0, aspect=1.0, min_size=32)
    assert 32 <= box.width <= 33 and 32 <= box.height <= 33  # rounded outwards to whole pixels
    assert box.contains(Box(100, 50, 101, 51))


def test_huge_mask_crops_the_whole_image():
    mask = np.full((100, 200), 255, np.uint8)
    assert crop_box(mask, padding=32, crop_factor=3.0, aspect=1.0, min_size=64) == Box(0, 0, 200, 100)


def test_empty_mask_has_no_crop():
    assert crop_box(np.zeros((10, 10), np.uint8), padding=4, crop_factor=1, aspect=1, min_size=4) is None


@pytest.mark.parametrize(
    ("width", "height", "short", "expected"),
    [
        (40, 40, 512, (512, 512)),
        (80, 40, 512, (1024, 512)),
        (40, 60, 64, (64, 96)),
        (10, 100, 64, (64, 128)),
        (33, 31, 1024, (1088, 1024)),
    ],
)
def test_working_size_keeps_the_aspect_in_multiples_of_eight(width, height, short, expected):
    assert working_size(width, height, short) == expected


def test_feather_blurs_beyond_the_mask_and_zero_blur_is_binary():
    mask = mask_with((50, 30, 70, 60))
    soft = feather(mask, 4.0)
    assert soft[45, 60] > 0 and soft[45, 60] < 255
    assert soft[0, 0] == 0
    assert set(np.unique(feather(mask, 0))) == {0, 255}


def test_paste_keeps_every_pixel_outside_the_feathered_mask():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    alpha = feather(mask_with((80, 30, 120, 70)), 3.0)
    box = Box(60, 10, 140, 90)
    patch = rng.integers(0, 256, (box.height, box.width, 3), dtype=np.uint8)
    result = paste(original, patch, alpha, box)
    outside = alpha == 0
    assert np.array_equal(result[outside], original[outside])
    full = alpha == 255
    region_full = full[box.y0 : box.y1, box.x0 : box.x1]
    assert np.array_equal(result[box.y0 : box.y1, box.x0 : box.x1][region_full], patch[region_full])
