"""Tile grids and feathered blend weights."""

from __future__ import annotations

import numpy as np
import pytest

from multipass_diffusion.imaging.tiling import Blender, Tile, default_margin, starts, tile_grid, tile_weight


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 32, 8), (64, 64, 16), (65, 64, 16), (300, 96, 32), (20, 64, 16)]
)
def test_starts_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    found = starts(length, tile, overlap)
    size = min(tile, length)
    assert found[0] == 0 and found[-1] + size == length
    for previous, following in zip(found, found[1:], strict=False):
        assert previous + size - following >= overlap


def test_grid_tiles_are_at_most_the_tile_size_and_cover_the_image():
    tiles = tile_grid(150, 70, 48, 16)
    covered = np.zeros((70, 150), bool)
    for tile in tiles:
        assert tile.width <= 48 and tile.height <= 48
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] = True
    assert covered.all()
    assert len(tiles) == len(starts(150, 48, 16)) * len(starts(70, 48, 16))


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        starts(100, 16, 16)


def test_weights_vanish_at_interior_edges_and_stay_full_at_image_borders():
    width, height, overlap = 100, 40, 16
    margin = default_margin(overlap)
    left = Tile(0, 0, 48, 40)
    weight = tile_weight(left, width, height, overlap, margin)
    assert weight.shape == (40, 48)
    assert (weight[:, : 48 - overlap] == 1).all()
    assert (weight[:, 48 - margin :] == 0).all()
    assert (np.diff(weight[0, 48 - overlap :]) <= 0).all()


def test_blending_exact_crops_gives_back_the_image_and_a_flat_result_stays_flat():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(70, 150, 3)).astype(np.float32)
    overlap = 16
    blender, flat = Blender(150, 70), Blender(150, 70)
    for tile in tile_grid(150, 70, 48, overlap):
        weight = tile_weight(tile, 150, 70, overlap, default_margin(overlap))
        blender.add(tile, image[tile.y0 : tile.y1, tile.x0 : tile.x1], weight)
        flat.add(tile, np.full((tile.height, tile.width, 3), 77.0, np.float32), weight)
    np.testing.assert_allclose(blender.result(), image, atol=1e-3)
    np.testing.assert_allclose(flat.result(), 77.0, atol=1e-4)


def test_tiles_scale_to_the_output_grid():
    assert Tile(3, 4, 10, 12).scaled(4) == Tile(12, 16, 40, 48)
