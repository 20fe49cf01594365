"""One mask per slot, each restricted to its own person by construction (tiny random SAM)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from multipass.errors import InvalidInput
from multipass_segmentation import mask_ops
from multipass_segmentation.person_masks import (
    PersonMaskOptions,
    figure_centre,
    neighbours,
    person_masks,
    territories,
)
from multipass_segmentation.pose_render import skeleton_lines
from multipass_segmentation.slots import Box, Keypoint, Slot, default_layout, figure_keypoints

H, W = 192, 256
LIMB_THICKNESS = 12
BOXES = (Box(40, 16, 140, 180), Box(105, 16, 205, 180))


def two_overlapping_figures() -> tuple[np.ndarray, list[Slot], list[np.ndarray]]:
    """A noisy grey image with two thick-limbed figures whose boxes overlap by 35 pixels."""
    rng = np.random.default_rng(0)
    image = (rng.random((H, W, 3)) * 60 + 100).astype(np.uint8)
    slots = [Slot(i, box, figure_keypoints(box)) for i, box in enumerate(BOXES)]
    figures = [skeleton_lines((H, W), s.keypoints, thickness=LIMB_THICKNESS) for s in slots]
    image[figures[0]] = (200, 40, 40)
    image[figures[1]] = (40, 40, 200)
    return image, slots, figures


def farther_than(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Pixels farther than ``pixels`` from ``mask``."""
    return (
        cv2.distanceTransform(np.where(mask, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        > pixels
    )


def test_territories_split_an_overlap_by_distance_to_the_box_centre_lines():
    # A covers columns 0..4 (centre line column 2), B columns 3..7 (centre line column 5); overlap 3..4.
    slots = [Slot(0, Box(0, 0, 5, 4)), Slot(1, Box(3, 0, 8, 4))]
    a, b = territories((4, 10), slots)
    expected_a = np.zeros((4, 10), dtype=bool)
    expected_a[:, 0:4] = True
    expected_b = np.zeros((4, 10), dtype=bool)
    expected_b[:, 4:8] = True
    assert np.array_equal(a, expected_a)
    assert np.array_equal(b, expected_b)


def test_territory_ties_go_to_the_lower_slot_and_separate_boxes_keep_their_box():
    # A centre line column 2, B (columns 4..8) centre line column 6: column 4 is 2 from both; equal areas.
    slots = [Slot(0, Box(0, 0, 5, 3)), Slot(1, Box(4, 0, 9, 3)), Slot(2, Box(10, 0, 12, 3))]
    a, b, c = territories((3, 12), slots)
    assert a[:, 4].all() and not b[:, 4].any()
    assert np.array_equal(c, mask_ops.box_mask((3, 12), (10, 0, 12, 3)))
    assert not (a & b).any() and not (a & c).any() and not (b & c).any()


def test_a_smaller_box_in_front_keeps_its_box_when_centre_lines_coincide():
    parent = Slot(0, Box(0, 0, 9, 12))  # centre line column 4, rows 1..10
    child = Slot(1, Box(2, 4, 7, 12))  # centre line column 4, rows 5..10: on the parent's line
    big, small = territories((12, 9), [parent, child])
    # rows 5..11 are equally near both lines: the smaller box wins; row 4 is nearer the parent's line
    assert np.array_equal(small, mask_ops.box_mask((12, 9), (2, 5, 7, 12)))
    assert np.array_equal(big, mask_ops.box_mask((12, 9), (0, 0, 9, 12)) & ~small)
    # listed the other way round, the result is the same
    small_first, big_second = territories((12, 9), [child, parent])
    assert np.array_equal(small_first, small) and np.array_equal(big_second, big)


def test_territories_follow_skeletons_when_keypoints_are_given():
    image, slots, figures = two_overlapping_figures()
    regions = territories((H, W), slots)
    for i, region in enumerate(regions):
        assert not (region & ~mask_ops.box_mask((H, W), BOXES[i].as_tuple())).any()
    assert not (regions[0] & regions[1]).any()
    # B's left arm reaches into A's box; every pixel of it (away from A's limbs) belongs to B
    exclusive_b = figures[1] & farther_than(figures[0], 2)
    inside_a = mask_ops.box_mask((H, W), BOXES[0].as_tuple())
    assert (exclusive_b & inside_a).sum() > 100
    assert not (regions[0] & exclusive_b).any()


def test_overlapping_people_each_mask_stays_within_its_person(segmenter):
    image, slots, figures = two_overlapping_figures()
    result = segmenter.person_masks(image, slots)
    assert [m.label for m in result.masks] == ["person-0", "person-1"]
    assert [m.index for m in result.masks] == [0, 1]
    masks = [m.mask for m in result.masks]
    embedding = segmenter.sam.embed(image)
    for i, j in ((0, 1), (1, 0)):
        assert masks[i].shape == (H, W) and masks[i].any()
        assert not result.masks[i].fallback
        assert not (masks[i] & ~mask_ops.box_mask((H, W), BOXES[i].as_tuple())).any()
        exclusive_j = figures[j] & farther_than(figures[i], 2)
        assert not (masks[i] & exclusive_j).any()
        # SAM alone (random weights) does spill onto the other person: the restriction is what holds
        raw = segmenter.sam.predict(
            embedding, box=BOXES[i].as_tuple(), positive=[(k.x, k.y) for k in slots[i].keypoints]
        )
        assert (raw.mask & exclusive_j).sum() > 100
    assert not (masks[0] & masks[1]).any()
    assert result.warnings == []


def test_overlapping_boxes_without_keypoints_stay_disjoint_and_off_the_other_centre_line(segmenter):
    image, slots, _ = two_overlapping_figures()
    boxes_only = [Slot(s.index, s.box) for s in slots]
    result = segmenter.person_masks(image, boxes_only)
    masks = [m.mask for m in result.masks]
    assert not (masks[0] & masks[1]).any()
    for i, j in ((0, 1), (1, 0)):
        assert not (masks[i] & ~mask_ops.box_mask((H, W), BOXES[i].as_tuple())).any()
        other = BOXES[j]
        band = mask_ops.box_mask((H, W), (other.centre[0] - 8, other.y0, other.centre[0] + 8, other.y1))
        assert not (masks[i] & band).any()


def test_a_slot_where_nothing_is_found_gets_its_silhouette_and_a_warning(segmenter):
    image, slots, _ = two_overlapping_figures()
    embedding = segmenter.sam.embed(image)
    options = PersonMaskOptions(min_fill=1.01)  # no SAM mask can fill more than its territory
    masks, warnings = person_masks(segmenter.sam, embedding, slots, options)
    regions = territories((H, W), slots)
    assert [m.fallback for m in masks] == [True, True]
    assert [m.score for m in masks] == [0.0, 0.0]
    assert (
        len(warnings) == 2
        and warnings[0].startswith("person slot 0:")
        and warnings[1].startswith("person slot 1:")
    )
    for i, mask in enumerate(masks):
        thickness = max(3, round(2 * options.limb_radius * BOXES[i].height))
        expected = skeleton_lines((H, W), slots[i].keypoints, thickness=thickness) & regions[i]
        assert np.array_equal(mask.mask, expected)
    # without keypoints the silhouette is the slot's territory (its box minus the neighbour's side)
    boxes_only = [Slot(s.index, s.box) for s in slots]
    masks, _ = person_masks(segmenter.sam, embedding, boxes_only, options)
    for mask, region in zip(masks, territories((H, W), boxes_only), strict=True):
        assert mask.fallback and np.array_equal(mask.mask, region)


def test_min_score_also_triggers_the_fallback(segmenter):
    image, slots, _ = two_overlapping_figures()
    embedding = segmenter.sam.embed(image)
    scores = [segmenter.sam.predict(embedding, box=s.box.as_tuple()).score for s in slots]
    assert all(0.0 <= s <= 1.0 for s in scores)
    masks, warnings = person_masks(
        segmenter.sam, embedding, slots, PersonMaskOptions(min_fill=0.0, min_score=1.01)
    )
    assert all(m.fallback for m in masks) and len(warnings) == 2


def test_negative_points_come_from_neighbouring_slots_only():
    near = [Slot(0, Box(0, 0, 100, 200)), Slot(1, Box(105, 0, 205, 200)), Slot(2, Box(400, 0, 500, 200))]
    assert neighbours(near, 0, 0.1) == [1]
    assert neighbours(near, 1, 0.1) == [0]
    assert neighbours(near, 2, 0.1) == []
    torso = (Keypoint(1, 50, 40), Keypoint(8, 40, 100), Keypoint(11, 60, 100), Keypoint(0, 0, 0))
    assert figure_centre(Slot(0, Box(0, 0, 100, 200), torso), 0.05) == pytest.approx((50.0, 80.0))
    assert figure_centre(Slot(0, Box(0, 0, 100, 200)), 0.05) == (50.0, 100.0)


def test_one_mask_per_slot_in_slot_order_for_three_people(segmenter):
    image = np.full((120, 300, 3), 128, dtype=np.uint8)
    slots = [Slot(i, Box(10 + 95 * i, 10, 95 + 95 * i, 110)) for i in range(3)]
    result = segmenter.person_masks(image, slots)
    assert [m.index for m in result.masks] == [0, 1, 2]
    for m, slot in zip(result.masks, slots, strict=True):
        assert not (m.mask & ~mask_ops.box_mask((120, 300), slot.box.as_tuple())).any()
        assert m.mask.any()


def test_bad_slots_are_rejected_with_their_fields(segmenter):
    image = np.zeros((50, 60, 3), dtype=np.uint8)
    with pytest.raises(InvalidInput) as caught:
        segmenter.person_masks(image, [Slot(0, Box(0, 0, 0, 10)), Slot(1, Box(10, 10, 70, 40))])
    assert [v.field for v in caught.value.violations] == ["persons.slots[0].box", "persons.slots[1].box"]


def test_layout_from_an_image(tiny_models):
    from multipass_segmentation.segmenter import Segmenter, SegmenterOptions

    image, _, _ = two_overlapping_figures()
    finds_all = Segmenter(tiny_models, SegmenterOptions(box_threshold=0.01, text_threshold=0.01))
    two = finds_all.layout(0, 0, 2, image)
    assert two.source == "detected" and [s.index for s in two.slots] == [0, 1] and two.warnings == []
    assert two.slots[0].box.centre[0] <= two.slots[1].box.centre[0]
    every = finds_all.layout(0, 0, 0, image)
    assert 2 <= len(every.slots) <= 16
    finds_none = Segmenter(tiny_models, SegmenterOptions(box_threshold=1.0))
    fallback = finds_none.layout(0, 0, 2, image)
    assert fallback.source == "default"
    assert [s.box for s in fallback.slots] == [s.box for s in default_layout(W, H, 2)]
    assert fallback.warnings == ["no person found in the image; 2 default figures stand in"]
    nobody = finds_none.layout(0, 0, 0, image)
    assert nobody.slots == [] and nobody.warnings == ["no person found in the image"]
    with pytest.raises(InvalidInput):
        finds_none.layout(0, 0, 17, image)
