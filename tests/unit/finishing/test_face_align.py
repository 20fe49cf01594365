"""Landmark-aligned face crops: templates, the similarity transform, the warp and the paste back, checked on
the scikit-image astronaut photo with hand-measured landmarks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.transform import SimilarityTransform

from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, diffusion_pb2
from multipass_diffusion.imaging.face_align import (
    ARCFACE_TEMPLATE,
    FFHQ_TEMPLATE,
    align,
    arcface_points,
    border_alpha,
    context_points,
    face_side,
    ffhq_points,
    paste_back,
    similarity_transform,
    square_alpha,
    warp,
)
from multipass_diffusion.imaging.face_regions import check_faces, face_landmarks, inpaint_alignment

#: Measured by eye on data.astronaut() (512x512), 12x zoom: the pupils' centres, the nose tip and the
#: mouth corners, left to right as seen in the image.
ASTRONAUT_LANDMARKS = np.array(
    [(203.5, 101.0), (246.5, 103.0), (223.0, 127.0), (204.0, 140.5), (242.5, 142.0)], dtype=np.float64
)


def rotation(degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = math.radians(degrees)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_templates_follow_insightface_and_facexlib():
    assert np.allclose(arcface_points(112), ARCFACE_TEMPLATE)
    assert np.allclose(arcface_points(224), ARCFACE_TEMPLATE * 2)
    assert np.allclose(arcface_points(128), ARCFACE_TEMPLATE + [8.0, 0.0])  # inswapper's 128 crop
    assert np.allclose(arcface_points(256), (ARCFACE_TEMPLATE + [8.0, 0.0]) * 2)
    assert np.allclose(ffhq_points(512), FFHQ_TEMPLATE)
    assert np.allclose(ffhq_points(256), FFHQ_TEMPLATE / 2)
    assert np.allclose(context_points(112, 1.0), ARCFACE_TEMPLATE)
    # context 2: the 112 square is half the crop, centred
    assert np.allclose(context_points(224, 2.0), ARCFACE_TEMPLATE + 56.0)


def test_the_similarity_recovers_a_known_transform_like_skimage():
    moved = apply(rotation(25.0, 1.7, (140.0, -30.0)), ARCFACE_TEMPLATE)
    matrix = similarity_transform(moved, ARCFACE_TEMPLATE)
    assert np.allclose(apply(matrix, moved), ARCFACE_TEMPLATE, atol=1e-9)
    noisy = moved + np.random.default_rng(0).normal(0, 2.0, moved.shape)
    expected = SimilarityTransform.from_estimate(noisy, ARCFACE_TEMPLATE).params[:2]
    assert np.allclose(similarity_transform(noisy, ARCFACE_TEMPLATE), expected, atol=1e-9)
    alignment = align(moved, 112, ARCFACE_TEMPLATE)
    assert alignment.scale == pytest.approx(1 / 1.7)
    assert face_side(moved) == pytest.approx(112 * 1.7)
    assert np.allclose(alignment.to_image(alignment.to_crop(noisy)), noisy)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.zeros((5, 2)), ARCFACE_TEMPLATE)


def darkest_near(grey: np.ndarray, point: np.ndarray, radius: int) -> np.ndarray:
    x0, y0 = int(round(point[0])) - radius, int(round(point[1])) - radius
    window = grey[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
    row, column = np.unravel_index(np.argmin(window), window.shape)
    return np.array([x0 + column, y0 + row], dtype=np.float64)


@pytest.mark.parametrize(
    ("size", "template"),
    [(112, arcface_points(112)), (128, arcface_points(128)), (512, ffhq_points(512))],
    ids=["arcface-112", "inswapper-128", "ffhq-512"],
)
def test_the_aligned_crop_puts_her_pupils_on_the_templates_eyes(size, template):
    crop = warp(data.astronaut(), align(ASTRONAUT_LANDMARKS, size, template))
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    unit = size / 112  # crop pixels per pixel of the 112 template
    grey = cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), unit)
    for eye in template[:2]:
        pupil = darkest_near(grey, eye, radius=round(6 * unit))
        assert np.linalg.norm(pupil - eye) / unit <= 3.0, (pupil, eye)


def test_a_tilted_face_comes_out_upright():
    image = data.astronaut()
    centre = tuple(ASTRONAUT_LANDMARKS.mean(axis=0))
    turn = cv2.getRotationMatrix2D(centre, 30.0, 1.0)
    tilted = cv2.warpAffine(
        image, turn, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    landmarks = apply(turn, ASTRONAUT_LANDMARKS)
    assert abs(landmarks[1, 1] - landmarks[0, 1]) > 15  # the eyes are no longer level
    upright = warp(image, align(ASTRONAUT_LANDMARKS, 112, arcface_points(112)))
    from_tilted = warp(tilted, align(landmarks, 112, arcface_points(112)))
    inner = (slice(16, 96), slice(16, 96))
    assert np.abs(upright[inner].astype(int) - from_tilted[inner].astype(int)).mean() < 4.0


def test_pasting_an_unmodified_crop_back_reproduces_the_image():
    image = data.astronaut()
    alignment = align(ASTRONAUT_LANDMARKS, 512, ffhq_points(512))
    alpha = border_alpha(512, 12.0)
    result = paste_back(image, warp(image, alignment), alpha, alignment)
    weight = cv2.warpAffine(alpha, alignment.inverse, (512, 512), flags=cv2.INTER_LINEAR)
    difference = np.abs(result.astype(int) - image.astype(int))
    assert np.array_equal(result[weight == 0], image[weight == 0])  # byte for byte outside
    full = weight > 0.999
    assert full.sum() > 100 * 100
    assert difference[full].mean() < 1.5 and np.percentile(difference[full], 99) <= 8
    changed = np.nonzero(difference.any(axis=2))
    footprint = alignment.footprint(512, 512)
    assert footprint.x0 <= changed[1].min() and changed[1].max() < footprint.x1
    assert footprint.y0 <= changed[0].min() and changed[0].max() < footprint.y1


def test_the_paste_follows_the_rotated_crop_and_keeps_everything_else():
    image = np.full((200, 200, 3), 40, np.uint8)
    landmarks = apply(rotation(35.0, 0.6, (60.0, 50.0)), ARCFACE_TEMPLATE)
    alignment = align(landmarks, 112, arcface_points(112))
    result = paste_back(image, np.full((112, 112, 3), 240, np.uint8), border_alpha(112, 0.0), alignment)
    corners = alignment.to_image(np.array([[0, 0], [112, 0], [112, 112], [0, 112]], dtype=np.float64))
    inside = np.zeros((200, 200), np.uint8)
    cv2.fillConvexPoly(inside, np.round(corners).astype(np.int32), 1)
    changed = (result != image).any(axis=2)
    assert changed.sum() > 0.9 * inside.sum()
    grown = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(bool)
    assert not (changed & ~grown).any()  # nothing outside the rotated square (and its edge pixels)
    box = alignment.footprint(200, 200)
    assert not changed[box.y0, box.x0] and not changed[box.y1 - 1, box.x1 - 1]  # bounding-box corners


def test_alphas_fade_to_zero_at_the_crop_border():
    alpha = border_alpha(128, 4.0)
    assert alpha[64, 64] == pytest.approx(1.0)
    assert alpha[0].max() < 0.01 and alpha[:, -1].max() < 0.01
    assert np.array_equal(border_alpha(64, 0.0), np.ones((64, 64), np.float32))
    square = square_alpha(128, 64.0, 0.0)
    assert square[32:96, 32:96].all() and not square[:31].any() and not square[:, 97:].any()


def test_the_inpaint_crop_holds_the_face_with_its_padding():
    side = face_side(ASTRONAUT_LANDMARKS)
    alignment, face_in_crop = inpaint_alignment(
        ASTRONAUT_LANDMARKS, 256, padding=32.0, crop_factor=1.0, min_side=0.0
    )
    assert face_in_crop == pytest.approx(256 * side / (side + 64))
    assert 256 / alignment.scale == pytest.approx(side + 64)  # the crop's side in image pixels
    # The template's eyes sit in the face square at the crop's centre.
    eyes = alignment.to_crop(ASTRONAUT_LANDMARKS[:2])
    assert abs(eyes.mean(axis=0)[0] - 128) < 3
    small, _ = inpaint_alignment(ASTRONAUT_LANDMARKS, 256, padding=0.0, crop_factor=1.0, min_side=400.0)
    assert 256 / small.scale == pytest.approx(400.0)


def target_with(points) -> diffusion_pb2.FaceTarget:
    face = diffusion_pb2.FaceTarget(box=common_pb2.Box(x0=10, y0=10, x1=60, y1=60))
    face.landmarks.extend(common_pb2.Point(x=x, y=y) for x, y in points)
    return face


def test_landmarks_are_checked_naming_the_field():
    good = target_with(ASTRONAUT_LANDMARKS)
    assert np.allclose(face_landmarks(good), ASTRONAUT_LANDMARKS, atol=1e-4)
    assert face_landmarks(target_with([])) is None
    spec = diffusion_pb2.PassSpec(kind="face_correct", faces=[good, target_with([])])
    check_faces(spec)
    cases = [
        (ASTRONAUT_LANDMARKS[:3], "got 3 points; expected 5"),
        ([(float("nan"), 1.0)] + [(1.0, 1.0)] * 4, "non-finite"),
        ([(30.0, 30.0), (30.2, 30.0), (31, 40), (28, 50), (33, 50)], "less than 1 pixel apart"),
    ]
    for points, message in cases:
        spec = diffusion_pb2.PassSpec(kind="faces", faces=[good, target_with(points)])
        with pytest.raises(InvalidInput) as raised:
            check_faces(spec)
        [violation] = raised.value.violations
        assert violation.field == "spec.faces[1].landmarks" and message in violation.description
