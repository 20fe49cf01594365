"""Every mask operation against expectations computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from multipass.errors import InvalidInput
from multipass_segmentation import mask_ops
from multipass_segmentation.mask_ops import Dilation


def grid(text: str) -> np.ndarray:
    """A mask from rows of '#' (set) and '.' (unset)."""
    return np.array([[c == "#" for c in row] for row in text.split()], dtype=bool)


def test_as_mask_accepts_bool_uint8_and_float():
    assert mask_ops.as_mask(np.array([[0, 127, 128, 255]], dtype=np.uint8)).tolist() == [
        [False, False, True, True]
    ]
    assert mask_ops.as_mask(np.array([[0.0, 0.49, 0.5, 1.0]])).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError):
        mask_ops.as_mask(np.zeros((2, 2, 3), dtype=np.uint8))


def test_to_uint8_is_0_or_255():
    assert mask_ops.to_uint8(grid("#. .#")).tolist() == [[255, 0], [0, 255]]


def test_subtract_invert_merge():
    a = grid("##.. ##..")
    b = grid(".##. .##.")
    assert np.array_equal(mask_ops.subtract(a, b), grid("#... #..."))
    assert np.array_equal(mask_ops.invert(a), grid("..## ..##"))
    assert np.array_equal(mask_ops.merge([a, b]), grid("###. ###."))
    assert np.array_equal(mask_ops.merge([], shape=(2, 4)), np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError):
        mask_ops.subtract(a, np.zeros((3, 3), dtype=bool))


def test_dilate_single_pixel_by_two_is_the_euclidean_disk_of_13_pixels():
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 3] = True
    expected = grid(
        """
        .......
        ...#...
        ..###..
        .#####.
        ..###..
        ...#...
        .......
        """
    )
    assert np.array_equal(mask_ops.dilate_erode(mask, 2), expected)
    # radius 3: all (dx, dy) with dx^2 + dy^2 <= 9 -> 29 pixels
    assert int(mask_ops.dilate_erode(mask, 3).sum()) == 29


def test_erode_square_by_one_leaves_its_inner_square_and_by_three_empties_it():
    square = np.zeros((9, 9), dtype=bool)
    square[2:7, 2:7] = True
    inner = np.zeros((9, 9), dtype=bool)
    inner[3:6, 3:6] = True
    assert np.array_equal(mask_ops.dilate_erode(square, -1), inner)
    centre = np.zeros((9, 9), dtype=bool)
    centre[4, 4] = True
    assert np.array_equal(mask_ops.dilate_erode(square, -2), centre)
    assert not mask_ops.dilate_erode(square, -3).any()


def test_erosion_does_not_eat_from_the_image_border():
    left_half = grid("###... ###... ###... ###...")
    assert np.array_equal(mask_ops.dilate_erode(left_half, -1), grid("##.... ##.... ##.... ##...."))
    full = np.ones((4, 4), dtype=bool)
    assert mask_ops.dilate_erode(full, -2).all()


def test_erosion_is_euclidean_at_corners():
    notch = np.ones((5, 5), dtype=bool)
    notch[0, 0] = False
    # (1, 1) lies sqrt(2) > 1 from the background at (0, 0): it stays.
    expected = grid("..### .#### ##### ##### #####")
    assert np.array_equal(mask_ops.dilate_erode(notch, -1), expected)


def test_dilate_zero_and_empty_masks_are_unchanged():
    mask = grid("#.. ...")
    assert np.array_equal(mask_ops.dilate_erode(mask, 0), mask)
    empty = np.zeros((3, 3), dtype=bool)
    assert not mask_ops.dilate_erode(empty, 5).any()
    assert not mask_ops.dilate_erode(empty, -5).any()


def test_percent_dilation_is_relative_to_the_shorter_side():
    assert Dilation(10, percent=True).to_pixels((40, 200)) == 4
    assert Dilation(-5, percent=True).to_pixels((200, 60)) == -3
    assert Dilation(7).to_pixels((10, 10)) == 7
    mask = np.zeros((40, 200), dtype=bool)
    mask[20, 100] = True
    grown = mask_ops.dilate_erode_by(mask, Dilation(5, percent=True))  # 2 pixels
    assert int(grown.sum()) == 13


def test_percent_erosion_that_empties_the_mask():
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 40:60] = True  # distance to background at most 10 pixels
    assert mask_ops.dilate_erode_by(mask, Dilation(-9, percent=True)).any()
    assert not mask_ops.dilate_erode_by(mask, Dilation(-10, percent=True)).any()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", Dilation(12)),
        ("-4", Dilation(-4)),
        ("5%", Dilation(5, True)),
        (" -2.5% ", Dilation(-2.5, True)),
    ],
)
def test_dilation_parse(text, expected):
    assert Dilation.parse(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5", "5px", "150%", "--3"])
def test_dilation_parse_rejects_with_the_field_named(text):
    with pytest.raises(InvalidInput) as caught:
        Dilation.parse(text, field="--dilate")
    assert caught.value.violations[0].field == "--dilate"


def test_feather_half_plane_is_symmetric_around_the_edge():
    mask = np.zeros((8, 20), dtype=bool)
    mask[:, :10] = True
    feathered = mask_ops.feather(mask, 2.0)
    assert feathered.dtype == np.uint8 and feathered.shape == (8, 20)
    soft = feathered.astype(int)
    row = soft[4]
    assert row[0] == 255 and row[-1] == 0
    assert all(row[i] >= row[i + 1] for i in range(19))
    for k in range(10):
        assert abs(row[9 - k] + row[10 + k] - 255) <= 1
    assert np.array_equal(mask_ops.feather(mask, 0), mask_ops.to_uint8(mask))


def test_offset_shifts_and_fills_with_unset():
    mask = grid("#.. ... ...")
    assert np.array_equal(mask_ops.offset(mask, 1, 2), grid("... ... .#."))
    assert np.array_equal(mask_ops.offset(grid("..# ... ..."), -2, 0), grid("#.. ... ..."))
    assert not mask_ops.offset(mask, 3, 0).any()
    assert not mask_ops.offset(mask, 0, -1).any()


def test_bounding_box_area_fraction_and_box_mask():
    mask = grid("..... .##.. .#... .....")
    assert mask_ops.bounding_box(mask) == (1, 1, 3, 3)
    assert mask_ops.bounding_box(np.zeros((3, 3), dtype=bool)) is None
    assert mask_ops.area_fraction(mask) == pytest.approx(3 / 20)
    assert np.array_equal(mask_ops.box_mask((4, 5), (1, 1, 3, 3)), grid("..... .##.. .##.. ....."))
    # fractional and out-of-image boxes: pixel centres decide, the image clips
    assert np.array_equal(mask_ops.box_mask((4, 5), (0.6, -3, 2.6, 1.6)), grid(".##.. .##.. ..... ....."))
    assert not mask_ops.box_mask((4, 5), (2, 2, 2, 4)).any()


def test_remove_small_components():
    mask = grid("##..# ##... ....# ...##")
    assert np.array_equal(mask_ops.remove_small_components(mask, 3), grid("##... ##... ....# ...##"))
    assert np.array_equal(mask_ops.remove_small_components(mask, 1), mask)


def test_filter_by_area_ratio():
    small = np.zeros((10, 10), dtype=bool)
    small[0, 0] = True  # 1%
    medium = np.zeros((10, 10), dtype=bool)
    medium[:2, :5] = True  # 10%
    large = np.ones((10, 10), dtype=bool)  # 100%
    assert mask_ops.filter_by_area_ratio([small, medium, large], 0.05, 0.5) == [1]
    assert mask_ops.filter_by_area_ratio([small, medium, large]) == [0, 1, 2]


def test_process_detections_order_and_vanished_masks():
    shape = (10, 20)

    def box(x0, y0, x1, y1):
        m = np.zeros(shape, dtype=bool)
        m[y0:y1, x0:x1] = True
        return m

    right = box(14, 2, 18, 6)  # 16 px, 8%
    left = box(1, 1, 7, 7)  # 36 px, 18%
    thin = box(9, 0, 10, 10)  # 10 px, 5%: a 1-pixel line vanishes under erosion
    tiny = box(0, 9, 1, 10)  # 1 px, 0.5%: filtered by area
    result = mask_ops.process_detections(
        [right, left, thin, tiny],
        [0.9, 0.5, 0.8, 0.99],
        shape,
        min_ratio=0.01,
        top_k=3,
        dx=1,
        dilation=Dilation(-1),
    )
    # area filter drops tiny; top-3 keeps right, thin, left; left-to-right: left, thin, right; erosion kills thin
    assert result.indices == [1, 0]
    assert result.vanished == [2]
    assert np.array_equal(result.masks[0], box(3, 2, 7, 6))
    assert np.array_equal(result.masks[1], box(16, 3, 18, 5))
    assert np.array_equal(result.merged, result.masks[0] | result.masks[1])


def test_process_detections_top_k_and_sorting():
    shape = (4, 8)
    a = np.zeros(shape, dtype=bool)
    a[0, 6] = True
    b = np.zeros(shape, dtype=bool)
    b[:2, :2] = True
    assert mask_ops.process_detections([a, b], [0.9, 0.1], shape, top_k=1).indices == [0]
    assert mask_ops.process_detections([a, b], [0.9, 0.1], shape, sort_by="area").indices == [1, 0]
    assert mask_ops.process_detections([a, b], [0.1, 0.9], shape, sort_by="score").indices == [1, 0]
    with pytest.raises(ValueError):
        mask_ops.process_detections([a, b], [0.9, 0.1], shape, sort_by="size")


def test_prompt_mask_order_subtract_then_dilate_then_invert():
    positive = np.zeros((7, 7), dtype=bool)
    positive[3, 1:6] = True
    negative = np.zeros((7, 7), dtype=bool)
    negative[3, 4:6] = True
    result = mask_ops.prompt_mask(positive, negative, dilation=Dilation(1), invert_result=True)
    remaining = np.zeros((7, 7), dtype=bool)
    remaining[3, 1:4] = True
    expected = ~mask_ops.dilate_erode(remaining, 1)
    assert np.array_equal(result.mask, expected)
    # dilating before subtracting would have left the negative's neighbourhood out; check the order matters
    assert result.mask[3, 4] == np.False_
    assert not result.empty_before_ops and not result.vanished


def test_prompt_mask_reports_vanishing_and_emptiness():
    positive = np.zeros((7, 7), dtype=bool)
    positive[3, 3] = True
    eroded = mask_ops.prompt_mask(positive, dilation=Dilation(-1))
    assert eroded.vanished and not eroded.empty_before_ops and not eroded.mask.any()
    nothing = mask_ops.prompt_mask(positive, positive, invert_result=True)
    assert nothing.empty_before_ops and not nothing.vanished and nothing.mask.all()
