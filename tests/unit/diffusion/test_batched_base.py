"""Batched base passes: one pipeline call for several seeds gives each seed's unbatched image.

Tolerance: the batched UNet/VAE run their matmuls and convolutions on a batch of N instead of 1, and
the CPU kernels pick other blockings (other summation orders) for other batch sizes, so float32 results
differ in the last bits; after a few denoising steps and the VAE that is at most a few 8-bit levels on
a handful of pixels. We allow 3 levels per pixel (of 255) and a mean difference under 0.5 level: a
wrong seed or a shifted noise draw changes the tiny model's image by tens of levels everywhere.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, pixels, scene, spec

from multipass.errors import Cancelled
from multipass_diffusion.pass_cache import MemoryPassCache
from multipass_diffusion.passes.context import PassInputs

SEEDS = [11, 12, 13]
MAX_LEVELS = 3
MAX_MEAN_LEVELS = 0.5


def assert_same_image(batched, alone) -> None:
    difference = np.abs(pixels(batched) - pixels(alone))
    assert difference.max() <= MAX_LEVELS and difference.mean() < MAX_MEAN_LEVELS, (
        difference.max(),
        difference.mean(),
    )


def unbatched(engine, base, inputs):
    outputs = []
    for seed in SEEDS:
        seeded = type(base)()
        seeded.CopyFrom(base)
        seeded.seed = seed
        outputs.append(engine.run(seeded, inputs))
    return outputs


@pytest.mark.parametrize(
    ("model", "fields", "inputs", "task"),
    [
        (SD15_MODEL, {}, None, "txt2img"),
        (SDXL_MODEL, {}, None, "txt2img"),
        (SD15_MODEL, {"denoising_strength": 0.6}, "image", "img2img"),
        (SD15_MODEL, {"controlnet": "canny", "controlnet_txt2img": True}, "image", "txt2img+controlnet"),
        (SD15_MODEL, {"controlnet": "tile", "denoising_strength": 0.5}, "image", "img2img+controlnet"),
        (SD15_MODEL, {"controlnet": "reference", "controlnet_txt2img": True}, "image", "txt2img+reference"),
        (SD15_MODEL, {"scheduler": "euler_a"}, None, "txt2img"),
        (SD15_MODEL, {"use_lpw": True}, None, "txt2img"),
    ],
)
def test_batched_images_equal_each_seeds_own_image(engine, model, fields, inputs, task):
    base = spec(model, **fields)
    pass_inputs = PassInputs(image=scene(64, 64)) if inputs == "image" else PassInputs()
    steps: dict[int, list[int]] = {i: [] for i in range(len(SEEDS))}
    progress = [lambda step, total, i=i: steps[i].append(step) for i in range(len(SEEDS))]
    batched = engine.run_batch(base, SEEDS, pass_inputs, progress=progress)
    alone = unbatched(engine, base, pass_inputs)
    for together, single in zip(batched, alone, strict=True):
        assert together.metadata["batch"] == str(len(SEEDS))
        assert together.metadata["task"] == task
        assert together.spec_hash == single.spec_hash  # the same cache entry as the unbatched pass
        assert_same_image(together.image, single.image)
    # Different seeds really are different images (the batch did not repeat one seed).
    assert np.abs(pixels(batched[0].image) - pixels(batched[1].image)).mean() > 5
    for i in range(len(SEEDS)):
        assert steps[i] and steps[i][-1] == int(batched[i].metadata["steps_run"])


def test_inpaint_runs_member_by_member_with_each_seeds_image(engine):
    image = scene(64, 64)
    inputs = PassInputs(image=image, mask=box_mask((64, 64), (16, 16, 48, 48)))
    base = spec(denoising_strength=0.9)
    batched = engine.run_batch(base, SEEDS, inputs)
    for together, single in zip(batched, unbatched(engine, base, inputs), strict=True):
        assert "batch" not in together.metadata
        assert np.array_equal(pixels(together.image), pixels(single.image))


def test_sde_scheduler_runs_member_by_member(engine):
    pytest.importorskip("torchsde")
    base = spec(scheduler="dpm++sde")
    batched = engine.run_batch(base, SEEDS[:2])
    for together, single in zip(batched, unbatched(engine, base, PassInputs())[:2], strict=True):
        assert "batch" not in together.metadata
        assert np.array_equal(pixels(together.image), pixels(single.image))


def test_cached_members_are_answered_and_only_misses_run(engine):
    from multipass_diffusion.engine import Engine

    cached_engine = Engine(engine.settings, cache=MemoryPassCache())
    cached_engine.runtimes = engine.runtimes
    first = spec(seed=SEEDS[1])
    warm = cached_engine.run(first)
    outputs = cached_engine.run_batch(spec(), SEEDS)
    assert [o.cache_hit for o in outputs] == [False, True, False]
    assert np.array_equal(pixels(outputs[1].image), pixels(warm.image))
    assert outputs[0].metadata["batch"] == "2" and outputs[2].metadata["batch"] == "2"
    again = cached_engine.run_batch(spec(), SEEDS)
    assert all(o.cache_hit for o in again)
    for before, after in zip(outputs, again, strict=True):
        assert np.array_equal(pixels(before.image), pixels(after.image))


def test_cancel_stops_the_whole_batch(engine):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.run_batch(spec(), SEEDS, cancel=cancel)
