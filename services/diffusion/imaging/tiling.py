"""Overlapping tiles and their feathered blend weights (pure numpy).

A ``width`` x ``height`` image is covered by tiles of at most ``tile`` pixels a side, each overlapping its
neighbours by at least ``overlap`` pixels (the last tile of a row or column is aligned to the image's edge).
Each tile's result is weighted by a separable ramp: 1 inside the tile, falling to 0 towards every edge that
is interior to the image (an edge on the image's border keeps weight 1). The ramp is 0 on the outermost
``margin`` pixels of an interior edge, where a model sees zero padding instead of the neighbouring
pixels, and rises linearly across the rest of the overlap. Blended results are divided by the summed
weights, so the weights of every pixel add up to 1 and a result the model computes identically in every
tile (a flat image) comes out identical to the untiled one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multipass_diffusion.imaging.crop_inpaint import Box


@dataclass(frozen=True)
class Tile(Box):
    """A tile of an image: a pixel box that can be scaled to the upscaled image."""

    def scaled(self, factor: int) -> Tile:
        return Tile(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile - overlap``, the last one aligned to the end."""
    size = min(tile, length)
    if size == length:
        return [0]
    stride = size - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {size}")
    found = list(range(0, length - size, stride))
    found.append(length - size)
    return found


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles covering the image, row by row."""
    tile_w, tile_h = min(tile, width), min(tile, height)
    return [
        Tile(x, y, x + tile_w, y + tile_h)
        for y in starts(height, tile, overlap)
        for x in starts(width, tile, overlap)
    ]


def _ramp(length: int, at_start: bool, at_end: bool, overlap: int, margin: int) -> np.ndarray:
    distance = np.arange(length, dtype=np.float32) + 0.5
    width = max(1.0, overlap - 2 * margin)
    weight = np.ones(length, dtype=np.float32)
    if not at_start:
        weight = np.minimum(weight, np.clip((distance - margin) / width, 0.0, 1.0))
    if not at_end:
        weight = np.minimum(weight, np.clip((distance[::-1] - margin) / width, 0.0, 1.0))
    return weight


def tile_weight(tile: Tile, width: int, height: int, overlap: int, margin: int) -> np.ndarray:
    """The tile's blend weight (height x width of the tile, float32 in 0..1)."""
    wx = _ramp(tile.width, tile.x0 == 0, tile.x1 == width, overlap, margin)
    wy = _ramp(tile.height, tile.y0 == 0, tile.y1 == height, overlap, margin)
    return wy[:, None] * wx[None, :]


def default_margin(overlap: int) -> int:
    return overlap // 4


class Blender:
    """Accumulates weighted tile results into one float image and normalises at the end."""

    def __init__(self, width: int, height: int, channels: int = 3):
        self.width, self.height = width, height
        self._sum = np.zeros((height, width, channels), dtype=np.float32)
        self._weight = np.zeros((height, width, 1), dtype=np.float32)

    def add(self, tile: Tile, result: np.ndarray, weight: np.ndarray) -> None:
        if result.shape[:2] != (tile.height, tile.width):
            raise ValueError(
                f"tile result is {result.shape[1]}x{result.shape[0]}, the tile {tile.width}x{tile.height}"
            )
        self._sum[tile.y0 : tile.y1, tile.x0 : tile.x1] += result.astype(np.float32) * weight[..., None]
        self._weight[tile.y0 : tile.y1, tile.x0 : tile.x1] += weight[..., None]

    def result(self) -> np.ndarray:
        if not (self._weight > 0).all():
            raise ValueError("the tiles leave pixels without weight (overlap too small for its margin)")
        return self._sum / self._weight
