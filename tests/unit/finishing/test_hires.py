"""The hires pass through the engine: Lanczos upscale then img2img, tiled above the comfortable size."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from finishing_testkit import pixels, scene, spec
from PIL import Image

from multipass.errors import Cancelled, InvalidInput
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.passes.hires import comfortable_side, hires_size
from multipass_diffusion.passes.sampling import steps_for_strength


def test_hires_size_scales_caps_and_rounds_to_multiples_of_eight():
    assert hires_size((64, 48), 2.0) == (128, 96)
    assert hires_size((100, 75), 1.5) == (144, 112)
    assert hires_size((3000, 2000), 2.0) == (4096, 2728)
    width, height = hires_size((3000, 2000), 2.0, cap=1000)
    assert max(width, height) <= 1000 and width % 8 == 0 and height % 8 == 0


def test_comfortable_side_is_twice_the_working_size():
    assert comfortable_side(512) == 1024 and comfortable_side(1024) == 2048


def test_hires_doubles_the_image_and_rediffuses_it(engine):
    image = scene(64, 48)
    output = engine.run(spec("hires"), PassInputs(image=image))
    assert output.image.size == (128, 96)
    assert output.metadata["task"] == "img2img"
    assert output.metadata["strength"] == "0.4"
    assert output.metadata["tiled"] == "no"
    lanczos = pixels(image.resize((128, 96)))
    assert np.abs(pixels(output.image) - lanczos).mean() > 1.0
    assert output.steps_run == 1  # 4 steps at strength 0.4


def test_few_steps_at_low_strength_still_denoise_one_step(engine):
    image = scene(64, 48)
    output = engine.run(spec("hires", steps=2), PassInputs(image=image))  # int(2 * 0.4) would be 0 steps
    assert output.steps_run == 1
    assert output.image.size == (128, 96)


def test_steps_for_strength_runs_at_least_one_step():
    for strength in (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0):
        for steps in (1, 2, 3, 30):
            needed = steps_for_strength(steps, strength)
            assert needed >= steps and int(needed * strength) >= 1
    assert steps_for_strength(30, 0.4) == 30


def test_large_results_are_rediffused_in_tiles_with_monotonic_progress(engine):
    reports = []
    image = scene(96, 80)
    run = lambda: engine.run(  # noqa: E731
        spec("hires", denoising_strength=0.5),
        PassInputs(image=image),
        progress=lambda d, t: reports.append((d, t)),
    )
    first = run()
    assert first.image.size == (192, 160)
    assert first.metadata["tiled"] == "yes"
    tiles = int(first.metadata["tiles"])
    assert tiles == 4
    assert first.steps_run == tiles * 2
    fractions = [done / total for done, total in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert np.array_equal(pixels(first.image), pixels(run().image))


def test_spec_tiled_forces_tiles_and_seed_changes_the_result(engine):
    image = scene(64, 48)
    tiled = engine.run(spec("hires", tiled=True, options={"hires_tile": "64"}), PassInputs(image=image))
    assert tiled.metadata["tiles"] == "6"  # 128x96 in 64-pixel tiles overlapping by 16: 3 x 2
    other = engine.run(
        spec("hires", tiled=True, seed=8, options={"hires_tile": "64"}), PassInputs(image=image)
    )
    assert not np.array_equal(pixels(tiled.image), pixels(other.image))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scale": 9.0}, "spec.scale"),
        ({"denoising_strength": 1.5}, "spec.denoising_strength"),
        ({"options": {"hires_tile": "100"}}, "spec.options[hires_tile]"),
        ({"options": {"hires_tile": "32"}}, "spec.options[hires_tile]"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(engine, fields, field):
    with pytest.raises(InvalidInput) as caught:
        engine.run(spec("hires", **fields), PassInputs(image=scene(64, 48)))
    assert caught.value.violations[0].field == field


def test_hires_needs_an_image(engine):
    with pytest.raises(InvalidInput, match="spec.image"):
        engine.run(spec("hires"), PassInputs())


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("hires", {"tiled": True, "options": {"hires_tile": "64"}}),
        ("upscale", {"tiled": True, "options": {"upscale_tile": "32", "upscale_tile_overlap": "8"}}),
    ],
)
def test_a_cancelled_tiled_pass_stops_after_the_current_step(engine, kind, fields):
    cancel = threading.Event()
    reports = []

    def progress(done: int, total: int) -> None:
        reports.append((done, total))
        cancel.set()

    with pytest.raises(Cancelled):
        engine.run(spec(kind, **fields), PassInputs(image=scene(64, 48)), progress=progress, cancel=cancel)
    assert len(reports) == 1 and reports[0][1] > 1


def test_zero_strength_only_upscales(engine):
    image = scene(64, 48)
    output = engine.run(spec("hires", denoising_strength=0.0), PassInputs(image=image))
    assert output.image.tobytes() == image.resize((128, 96), Image.Resampling.LANCZOS).tobytes()
    assert output.metadata["strength"] == "0" and output.steps_run == 0
