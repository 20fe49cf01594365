"""The faces pass (inpaint_faces) through the engine: each face crop-inpainted with its own prompt/LoRA."""

from __future__ import annotations

import numpy as np
import pytest
from finishing_testkit import SD15_MODEL, face, pixels, scene, spec

from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, prompt_pb2
from multipass_dev.tiny_models.diffusion import write_random_lora
from multipass_diffusion.imaging.crop_inpaint import feather
from multipass_diffusion.imaging.face_regions import face_box, rect_mask
from multipass_diffusion.passes.context import PassInputs

SIZE = (256, 128)
LEFT, RIGHT = (20, 40, 44, 68), (196, 30, 236, 78)


def feathered_union(faces, sigma: float = 4.0) -> np.ndarray:
    union = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    for target in faces:
        union = np.maximum(union, feather(rect_mask(SIZE, face_box(target, SIZE)), sigma))
    return union


@pytest.fixture(scope="module")
def lora(model_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("face-lora") / "person.safetensors"
    return write_random_lora(model_root / "diffusion" / SD15_MODEL, path, seed=21)


def test_only_the_feathered_face_regions_change(engine):
    image = scene(*SIZE)
    faces = [face(LEFT, "a smiling face"), face(RIGHT, "an old face")]
    output = engine.run(spec("faces", faces=faces), PassInputs(image=image))
    before, after = pixels(image), pixels(output.image)
    assert output.image.size == SIZE
    outside = feathered_union(faces) == 0
    assert np.array_equal(before[outside], after[outside])
    for box in (LEFT, RIGHT):
        x0, y0, x1, y1 = box
        assert np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean() > 2.0
    assert output.metadata["faces"] == "2"
    assert output.metadata["task"] == "inpaint"


def test_smaller_faces_get_a_higher_denoising_strength(engine):
    faces = [face(LEFT), face(RIGHT)]
    output = engine.run(
        spec("faces", faces=faces, denoising_strength=0.5, options={"faces_denoise_power": "8"}),
        PassInputs(image=scene(*SIZE)),
    )
    small, large = (float(v) for v in output.metadata["face_strengths"].split(";"))
    assert large < small < 0.5
    area = (RIGHT[2] - RIGHT[0]) * (RIGHT[3] - RIGHT[1]) / (SIZE[0] * SIZE[1])
    assert large == pytest.approx(0.5 * (1 - area) ** 8, abs=1e-3)


def test_each_face_uses_its_own_prompt_and_lora_and_the_next_face_does_not(engine, lora):
    image = scene(*SIZE)
    plain = [face(LEFT, "a face"), face(RIGHT, "a face")]
    ref = prompt_pb2.LoraRef(tune_id="4242", weight=1.0, kind="lora")
    with_lora = [face(LEFT, "a face", loras=[ref]), face(RIGHT, "a face")]
    files = {"4242": common_pb2.ObjectRef(bucket="multipass-tunes", key="tunes/t/4242/person.safetensors")}
    base = engine.run(spec("faces", faces=plain), PassInputs(image=image))
    tuned = engine.run(
        spec("faces", faces=with_lora, tune_files=files), PassInputs(image=image, tune_paths={"4242": lora})
    )
    prompted = engine.run(
        spec("faces", faces=[face(LEFT, "a face"), face(RIGHT, "a clown")]), PassInputs(image=image)
    )
    left = (slice(LEFT[1], LEFT[3]), slice(LEFT[0], LEFT[2]))
    right = (slice(RIGHT[1], RIGHT[3]), slice(RIGHT[0], RIGHT[2]))
    assert np.abs(pixels(tuned.image)[left] - pixels(base.image)[left]).mean() > 0.5
    assert np.array_equal(pixels(tuned.image)[right], pixels(base.image)[right])
    assert np.array_equal(pixels(prompted.image)[left], pixels(base.image)[left])
    assert not np.array_equal(pixels(prompted.image)[right], pixels(base.image)[right])


def test_a_face_lora_without_a_tune_file_is_refused(engine):
    ref = prompt_pb2.LoraRef(tune_id="777", weight=1.0, kind="lora")
    with pytest.raises(InvalidInput, match="spec.faces\\[0\\].loras"):
        engine.run(spec("faces", faces=[face(LEFT, loras=[ref])]), PassInputs(image=scene(*SIZE)))


def test_the_pass_is_deterministic_for_a_seed(engine):
    faces = [face(LEFT, "a face")]
    image = scene(*SIZE)
    first = engine.run(spec("faces", faces=faces), PassInputs(image=image))
    again = engine.run(spec("faces", faces=faces), PassInputs(image=image))
    other = engine.run(spec("faces", faces=faces, seed=99), PassInputs(image=image))
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert not np.array_equal(pixels(first.image), pixels(other.image))


def test_without_faces_the_image_comes_back_unchanged_with_a_warning(engine):
    image = scene(*SIZE)
    output = engine.run(spec("faces", faces=[face((300, 10, 320, 30))]), PassInputs(image=image))
    assert np.array_equal(pixels(output.image), pixels(image))
    assert any("outside the image" in w for w in output.warnings)
    assert any("no face to repaint" in w for w in output.warnings)


def test_face_lora_files_are_part_of_the_cache_key():
    from multipass_diffusion.passes.faces import FacesPass

    ref = prompt_pb2.LoraRef(tune_id="9", weight=1.0, kind="lora")
    first = spec(
        "faces", faces=[face(LEFT, loras=[ref])], tune_files={"9": common_pb2.ObjectRef(sha256="aa")}
    )
    second = spec(
        "faces", faces=[face(LEFT, loras=[ref])], tune_files={"9": common_pb2.ObjectRef(sha256="bb")}
    )
    parts = FacesPass().cache_parts(first, "/nowhere")
    assert "tune-file:9=aa" in parts
    assert parts != FacesPass().cache_parts(second, "/nowhere")


def test_a_set_zero_denoising_strength_returns_the_image_unchanged(engine):
    # docs/DIFFUSION.md: a set 0 (any pass from an image) runs no denoising step; unset is the default 0.4.
    image = scene(*SIZE)
    output = engine.run(spec("faces", faces=[face(LEFT)], denoising_strength=0.0), PassInputs(image=image))
    assert np.array_equal(pixels(output.image), pixels(image))
    assert output.metadata["strength"] == "0"
    assert output.steps_run == 0
    unset = engine.run(spec("faces", faces=[face(LEFT)]), PassInputs(image=image))
    assert not np.array_equal(pixels(unset.image), pixels(image))
