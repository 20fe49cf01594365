"""Device settings: VAE tiling above a pixel threshold, channels_last only on CUDA."""

from __future__ import annotations

import pytest
import torch
from diffusion_testkit import SD15_MODEL, spec

from multipass_diffusion.device_tuning import tune_unets, vae_tiling_for


class FakeVae:
    def __init__(self):
        self.tiled = None

    def enable_tiling(self):
        self.tiled = True

    def disable_tiling(self):
        self.tiled = False


@pytest.mark.parametrize(
    ("size", "threshold", "tiled"),
    [((1024, 1024), 1536 * 1536, False), ((2048, 2048), 1536 * 1536, True), ((4096, 4096), 0, False)],
)
def test_vae_tiles_only_above_the_threshold(size, threshold, tiled):
    vae = FakeVae()
    assert vae_tiling_for(vae, size, threshold) is tiled
    assert vae.tiled is tiled


def test_channels_last_is_left_alone_on_cpu():
    conv = torch.nn.Conv2d(4, 4, 3)
    tune_unets([conv], "cpu")
    assert conv.weight.is_contiguous()


def test_a_large_image_is_decoded_in_tiles_with_the_same_size(engine):
    runtime = engine.runtime(SD15_MODEL)
    previous = runtime.vae_tile_above_pixels
    try:
        runtime.vae_tile_above_pixels = 64 * 64
        tiled = engine.run(spec(SD15_MODEL, width=128, height=128, seed=5))
        runtime.vae_tile_above_pixels = 0
        whole = engine.run(spec(SD15_MODEL, width=128, height=128, seed=5))
    finally:
        runtime.vae_tile_above_pixels = previous
        runtime.base.pipe.vae.disable_tiling()
    assert tiled.metadata.get("vae_tiled") == "yes" and "vae_tiled" not in whole.metadata
    assert tiled.image.size == whole.image.size == (128, 128)
    assert tiled.spec_hash != whole.spec_hash  # tiling is part of the pass-cache key
