"""Slot layouts, ordering, validation and the OpenPose-convention pose image."""

from __future__ import annotations

import numpy as np
import pytest

from multipass.errors import InvalidInput
from multipass_segmentation import pose_render
from multipass_segmentation.slots import (
    STANDING_FIGURE,
    Box,
    Keypoint,
    Slot,
    check_slots,
    complete_layout,
    default_layout,
    figure_keypoints,
    slots_from_boxes,
    sort_left_to_right,
)


def test_default_layout_two_figures_in_a_square():
    slots = default_layout(1000, 1000, 2)
    assert [s.index for s in slots] == [0, 1]
    # columns of 500 px; figures 860 px tall, 344 px wide (40% of the height), feet at 950
    first, second = slots
    assert first.box.as_tuple() == pytest.approx((78.0, 90.0, 422.0, 950.0))
    assert second.box.as_tuple() == pytest.approx((578.0, 90.0, 922.0, 950.0))
    assert len(first.keypoints) == 18
    assert all(k.confidence == 1.0 for k in first.keypoints)


def test_default_layout_is_left_to_right_non_overlapping_and_inside():
    for width, height, count in [(512, 512, 1), (768, 512, 3), (512, 768, 5), (1024, 256, 8), (300, 900, 16)]:
        slots = default_layout(width, height, count)
        assert len(slots) == count
        centres = [s.box.centre[0] for s in slots]
        assert centres == sorted(centres)
        for a, b in zip(slots, slots[1:], strict=False):
            assert a.box.x1 <= b.box.x0
        for s in slots:
            assert 0 <= s.box.x0 < s.box.x1 <= width and 0 <= s.box.y0 < s.box.y1 <= height
            assert s.box.y1 == pytest.approx(0.95 * height)
            assert s.box.width <= 0.40 * s.box.height + 1e-9
        check_slots(slots, width, height)


def test_narrow_columns_shrink_the_figure_keeping_its_proportions():
    slots = default_layout(400, 1000, 8)  # columns of 50 px: figure width 45, so height 180
    box = slots[0].box
    assert box.width == pytest.approx(45.0)
    assert box.height == pytest.approx(180.0)
    assert box.y1 == pytest.approx(950.0)


@pytest.mark.parametrize(
    ("width", "height", "count", "field"), [(0, 10, 1, "width"), (10, 10, 0, "count"), (10, 10, 17, "count")]
)
def test_default_layout_rejects_bad_sizes(width, height, count, field):
    with pytest.raises(InvalidInput) as caught:
        default_layout(width, height, count)
    assert [v.field for v in caught.value.violations] == [field]


def test_figure_keypoints_follow_the_standing_figure():
    box = Box(100, 200, 200, 400)
    points = figure_keypoints(box, confidence=0.7)
    assert [k.index for k in points] == list(range(18))
    nose, neck = points[0], points[1]
    assert (nose.x, nose.y) == pytest.approx((150.0, 218.0))
    assert (neck.x, neck.y) == pytest.approx((150.0, 238.0))
    # the person's right shoulder (index 2) is on the image's left
    assert points[2].x < points[1].x < points[5].x
    assert all(k.confidence == 0.7 for k in points)
    assert len(STANDING_FIGURE) == 18


def test_sort_left_to_right_reindexes():
    slots = [Slot(0, Box(300, 0, 400, 100)), Slot(1, Box(0, 0, 100, 100)), Slot(2, Box(150, 0, 250, 100))]
    ordered = sort_left_to_right(slots)
    assert [s.index for s in ordered] == [0, 1, 2]
    assert [s.box.x0 for s in ordered] == [0, 150, 300]


def test_slots_from_boxes_keeps_the_best_count_then_sorts_and_clips():
    boxes = [Box(300, 10, 420, 200), Box(-20, 0, 90, 210), Box(150, 5, 260, 190), Box(500, 0, 530, 40)]
    scores = [0.9, 0.8, 0.4, 0.95]
    slots = slots_from_boxes(boxes, scores, 512, 200, count=3)
    assert [s.box.as_tuple() for s in slots] == [
        (0.0, 0.0, 90.0, 200.0),
        (300.0, 10.0, 420.0, 200.0),
        (500.0, 0.0, 512.0, 40.0),
    ]
    assert [s.index for s in slots] == [0, 1, 2]
    assert all(s.keypoints == () for s in slots)
    assert len(slots_from_boxes(boxes, scores, 512, 200)) == 4


def test_complete_layout_fills_the_columns_no_detection_took():
    # three columns of 200 px (centres 100, 300, 500); the detected person stands at x 260..360 (centre 310)
    detected = [Slot(0, Box(260, 50, 360, 580))]
    slots = complete_layout(detected, 600, 600, 3)
    assert [s.index for s in slots] == [0, 1, 2]
    defaults = default_layout(600, 600, 3)
    assert slots[0].box == defaults[0].box and len(slots[0].keypoints) == 18
    assert slots[1].box == Box(260, 50, 360, 580) and slots[1].keypoints == ()
    assert slots[2].box == defaults[2].box
    # enough detections: the first `count` are kept, in order
    many = [Slot(0, Box(400, 0, 500, 100)), Slot(0, Box(0, 0, 100, 100)), Slot(0, Box(200, 0, 300, 100))]
    assert [s.box.x0 for s in complete_layout(many, 600, 600, 2)] == [0, 400]


def test_check_slots_names_every_bad_field():
    slots = [
        Slot(0, Box(10, 10, 10, 50)),  # zero width
        Slot(1, Box(-5, 0, 50, 50)),  # outside
        Slot(3, Box(0, 0, 20, 20), (Keypoint(18, 5, 5), Keypoint(0, 500, 5), Keypoint(1, 999, 999, 0.0))),
        Slot(3, Box(0, 0, float("nan"), 20)),
    ]
    with pytest.raises(InvalidInput) as caught:
        check_slots(slots, 100, 100)
    fields = [v.field for v in caught.value.violations]
    assert fields == [
        "persons.slots[0].box",
        "persons.slots[1].box",
        "persons.slots[2].index",
        "persons.slots[2].keypoints[0].index",
        "persons.slots[2].keypoints[1]",
        "persons.slots[3].box",
    ]
    assert "no area" in caught.value.violations[0].description
    assert "inside the 100x100 image" in caught.value.violations[1].description


def test_check_slots_requires_at_least_one_and_accepts_boxes_touching_the_border():
    with pytest.raises(InvalidInput):
        check_slots([], 10, 10)
    check_slots([Slot(0, Box(0, 0, 10, 10))], 10, 10)


def test_pose_image_uses_openpose_colours():
    slots = default_layout(512, 512, 1)
    image = pose_render.render_pose(512, 512, slots)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    points = {k.index: k for k in slots[0].keypoints}
    # keypoints are drawn last in full colour: nose red, neck orange, right knee cyan, left ankle violet
    for index, colour in [(0, (255, 0, 0)), (1, (255, 85, 0)), (9, (0, 255, 255)), (13, (85, 0, 255))]:
        k = points[index]
        assert tuple(image[round(k.y), round(k.x)]) == colour
    # limbs are 60% colours: neck->right hip (limb 6, green (0, 255, 0)) at its midpoint
    mid = ((points[1].x + points[8].x) / 2, (points[1].y + points[8].y) / 2)
    assert tuple(image[round(mid[1]), round(mid[0])]) == (0, 153, 0)
    # background is black and nothing is drawn far from the figure
    assert tuple(image[5, 5]) == (0, 0, 0)
    assert not image[:, : int(slots[0].box.x0) - 8].any()


def test_pose_stroke_scales_with_the_image():
    assert pose_render.stroke_width(512, 512) == 4
    assert pose_render.stroke_width(1024, 2048) == 8
    assert pose_render.stroke_width(64, 64) == 2


def test_pose_skips_invisible_keypoints_and_empty_slots():
    box = Box(10, 10, 90, 190)
    keypoints = tuple(
        Keypoint(k.index, k.x, k.y, 0.0 if k.index == 4 else 1.0) for k in figure_keypoints(box)
    )
    image = pose_render.render_pose(100, 200, [Slot(0, box, keypoints), Slot(1, Box(0, 0, 5, 5))])
    wrist = keypoints[4]
    assert tuple(image[round(wrist.y), round(wrist.x)]) == (0, 0, 0)
    assert image.any()
