"""The finish pass through the engine: colour grading then seeded film grain, from spec.options."""

from __future__ import annotations

import numpy as np
import pytest
from finishing_testkit import pixels, scene, spec

from multipass.errors import InvalidInput
from multipass_diffusion.imaging.grading import LOOKS, color_grade
from multipass_diffusion.passes.context import PassInputs


def test_grading_alone_is_the_look_applied(engine):
    image = scene(96, 64)
    output = engine.run(spec("finish", options={"color_grading": "Film Portra"}), PassInputs(image=image))
    assert np.array_equal(np.asarray(output.image), color_grade(np.asarray(image), LOOKS["Film Portra"]))
    assert output.metadata["color_grading"] == "Film Portra"


def test_grading_and_grain_are_deterministic_for_the_seed(engine):
    image = scene(96, 64)
    options = {"color_grading": "ektar", "film_grain": "0.4"}
    first = engine.run(spec("finish", options=options, seed=3), PassInputs(image=image))
    again = engine.run(spec("finish", options=options, seed=3), PassInputs(image=image))
    other = engine.run(spec("finish", options=options, seed=4), PassInputs(image=image))
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert not np.array_equal(pixels(first.image), pixels(other.image))
    graded = color_grade(np.asarray(image), LOOKS["Ektar"]).astype(np.int16)
    assert abs((pixels(first.image) - graded).mean()) < 1.0
    assert (pixels(first.image) - graded).std() > 3
    assert first.metadata == {**first.metadata, "color_grading": "Ektar", "film_grain": "0.4"}


def test_grain_on_accepts_true(engine):
    output = engine.run(spec("finish", options={"film_grain": "true"}), PassInputs(image=scene(64, 48)))
    assert output.metadata["film_grain"] == "0.35"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"color_grading": "Kodachrome"}, "spec.options[color_grading]"),
        ({"film_grain": "lots"}, "spec.options[film_grain]"),
        ({"film_grain": "2"}, "spec.options[film_grain]"),
        ({"film_grain": "0.3", "film_grain_size": "-1"}, "spec.options[film_grain_size]"),
    ],
)
def test_bad_options_are_refused_naming_the_option(engine, options, field):
    with pytest.raises(InvalidInput) as caught:
        engine.run(spec("finish", options=options), PassInputs(image=scene(64, 48)))
    assert caught.value.violations[0].field == field
    if "color_grading" in options:
        assert "'Film Velvia'" in caught.value.violations[0].description


def test_nothing_to_do_returns_the_image_with_a_warning(engine):
    image = scene(64, 48)
    output = engine.run(spec("finish"), PassInputs(image=image))
    assert np.array_equal(pixels(output.image), pixels(image))
    assert any("neither color_grading nor film_grain" in w for w in output.warnings)
