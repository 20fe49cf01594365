"""Face boxes, paste masks and the size-dependent denoise."""

from __future__ import annotations

import numpy as np
import pytest
from finishing_testkit import face, spec

from multipass.errors import InvalidInput
from multipass_diffusion.imaging.crop_inpaint import Box
from multipass_diffusion.imaging.face_regions import (
    check_faces,
    dynamic_strength,
    ellipse_alpha,
    face_box,
    face_sigma,
    square_crop,
)


def test_dynamic_strength_gives_small_faces_more_denoise():
    small = dynamic_strength(0.4, 0.01, 2.0)
    large = dynamic_strength(0.4, 0.3, 2.0)
    assert large < small <= 0.4
    assert small == pytest.approx(0.4 * 0.99**2)
    assert large == pytest.approx(0.4 * 0.7**2)


def test_dynamic_strength_power_zero_keeps_the_strength_and_results_are_clamped():
    assert dynamic_strength(0.4, 0.5, 0.0) == pytest.approx(0.4)
    assert dynamic_strength(0.4, 1.0, 2.0) == pytest.approx(0.05)
    assert dynamic_strength(0.4, 0.9, 2.0, low=0.1) == pytest.approx(0.1)
    assert dynamic_strength(1.5, 0.0, 1.0) == pytest.approx(1.0)
    assert dynamic_strength(0.4, -0.2, 2.0) == pytest.approx(0.4)


def test_dynamic_strength_falls_monotonically_with_the_face_area():
    values = [dynamic_strength(0.6, ratio, 3.0) for ratio in np.linspace(0, 0.8, 17)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_face_boxes_round_outwards_and_clip_to_the_image():
    assert face_box(face((10.4, 5.6, 30.2, 40.0)), (100, 50)) == Box(10, 5, 31, 40)
    assert face_box(face((-5, -5, 20, 60)), (100, 50)) == Box(0, 0, 20, 50)
    assert face_box(face((120, 10, 140, 20)), (100, 50)) is None


def test_inverted_or_non_finite_boxes_are_refused_with_the_field():
    with pytest.raises(InvalidInput) as caught:
        check_faces(spec("faces", faces=[face((0, 0, 10, 10)), face((20, 5, 10, 30))]))
    assert caught.value.violations[0].field == "spec.faces[1].box"
    with pytest.raises(InvalidInput):
        check_faces(spec("faces", faces=[face((0, float("nan"), 10, 10))]))


def test_square_crop_holds_the_box_and_stays_inside_the_image():
    box = Box(2, 30, 22, 50)
    crop = square_crop(box, (100, 60), 1.5)
    assert crop.contains(box)
    assert crop.width == crop.height == 30
    assert crop.x0 == 0 and crop.x1 <= 100 and crop.y1 <= 60


def test_ellipse_alpha_is_full_inside_the_face_and_zero_outside_the_crop():
    box = Box(40, 20, 60, 44)
    crop = square_crop(box, (100, 80), 1.5)
    alpha = ellipse_alpha((100, 80), box, crop, sigma=face_sigma(box, 0))
    assert alpha.shape == (80, 100) and alpha.dtype == np.uint8
    assert alpha[32, 50] == 255
    outside = np.ones_like(alpha, bool)
    outside[crop.y0 : crop.y1, crop.x0 : crop.x1] = False
    assert not alpha[outside].any()
    assert alpha[20, 40] < 128  # the box's corner is outside the ellipse


def test_face_sigma_uses_mask_blur_when_set():
    box = Box(0, 0, 50, 100)
    assert face_sigma(box, 0) == pytest.approx(3.0)
    assert face_sigma(box, 7) == 7
    assert face_sigma(box, -1) == 0
