"""Base and person passes on the tiny SD1.5 and SDXL models: every task, determinism, progress, cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, pixels, scene, spec
from PIL import Image

from multipass.errors import Cancelled, FailedPrecondition, InvalidInput
from multipass.images import encode_png
from multipass.v1 import common_pb2, diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import Box, feather
from multipass_diffusion.passes.context import PassInputs

MODELS = [SD15_MODEL, SDXL_MODEL]


@pytest.mark.parametrize("model", MODELS)
def test_txt2img(engine, model):
    output = engine.run(spec(model, width=64, height=96))
    assert output.image.size == (64, 96)
    assert output.metadata["task"] == "txt2img"
    assert output.steps_run == 4
    assert pixels(output.image).std() > 1
    assert not output.cache_hit and len(output.spec_hash) == 64


@pytest.mark.parametrize("model", MODELS)
def test_same_spec_and_seed_give_the_same_bytes(engine, model):
    first = engine.run(spec(model, seed=42))
    second = engine.run(spec(model, seed=42))
    assert encode_png(first.image) == encode_png(second.image)
    assert first.spec_hash == second.spec_hash
    other = engine.run(spec(model, seed=43))
    assert encode_png(other.image) != encode_png(first.image)


def test_size_defaults_to_the_model_native_size(engine):
    output = engine.run(spec(width=0, height=0))
    assert output.image.size == (64, 64)


@pytest.mark.parametrize("model", MODELS)
def test_img2img_follows_strength(engine, model):
    source = scene(96, 64)
    weak = engine.run(
        spec(model, width=0, height=0, steps=10, denoising_strength=0.3), PassInputs(image=source)
    )
    strong = engine.run(
        spec(model, width=0, height=0, steps=10, denoising_strength=0.9), PassInputs(image=source)
    )
    assert weak.image.size == (96, 64)
    assert weak.metadata["task"] == "img2img"
    # diffusers runs int(steps * strength) steps; 0.9 must not lose one to float32 rounding
    assert weak.steps_run == 3 and strong.steps_run == 9
    assert weak.image.tobytes() != strong.image.tobytes()


@pytest.mark.parametrize("model", MODELS)
def test_controlnet_txt2img_uses_the_conditioning(engine, model):
    source = scene(64, 64)
    runs = [
        engine.run(
            spec(model, controlnet="canny", controlnet_txt2img=True, controlnet_conditioning_scale=scale),
            PassInputs(image=source),
        )
        for scale in (0.5, 1.5)
    ]
    assert runs[0].metadata["task"] == "txt2img+controlnet"
    assert runs[0].image.tobytes() != runs[1].image.tobytes()


def test_controlnet_img2img(engine):
    source = scene(64, 64)
    output = engine.run(spec(controlnet="tile", denoising_strength=0.5), PassInputs(image=source))
    assert output.metadata["task"] == "img2img+controlnet"
    assert output.steps_run == 2


def test_pose_controlnet_from_skeletons_without_an_image(engine):
    skeleton = diffusion_pb2.Skeleton(
        keypoints=[common_pb2.Keypoint(index=i, x=20 + i, y=10 + 2 * i, confidence=1) for i in range(18)]
    )
    output = engine.run(spec(controlnet="pose", skeletons=[skeleton]))
    assert output.metadata["task"] == "txt2img+controlnet"


def test_control_image_given_skips_the_preprocessor(engine):
    control = scene(64, 64, seed=3)
    output = engine.run(
        spec(controlnet="depth", controlnet_txt2img=True), PassInputs(image=scene(), control_image=control)
    )
    assert output.metadata["task"] == "txt2img+controlnet"


def test_weighted_preprocessor_missing_is_a_failed_precondition(engine):
    with pytest.raises(FailedPrecondition, match=r"preprocessors/depth/config\.json"):
        engine.run(spec(controlnet="depth"), PassInputs(image=scene()))


def test_controlnet_missing_for_the_family_names_its_directory(engine):
    with pytest.raises(FailedPrecondition, match=r"controlnet/sdxl/depth"):
        engine.run(spec(SDXL_MODEL, controlnet="depth"), PassInputs(image=scene(), control_image=scene()))


@pytest.mark.parametrize("model", MODELS)
def test_base_inpaint_changes_only_inside_the_feathered_mask(engine, model):
    source = scene(96, 64)
    mask = box_mask(source.size, (30, 20, 60, 44))
    output = engine.run(spec(model, width=0, height=0, mask_blur=3), PassInputs(image=source, mask=mask))
    assert output.metadata["task"] == "inpaint"
    alpha = feather(np.asarray(mask), 3)
    result, original = pixels(output.image), pixels(source)
    assert np.array_equal(result[alpha == 0], original[alpha == 0])
    assert np.abs(result[alpha == 255] - original[alpha == 255]).mean() > 5


def test_sd15_inpaints_with_its_inpainting_unet_and_sdxl_in_latent_space(engine):
    sd15 = engine.runtime(SD15_MODEL).base
    sdxl = engine.runtime(SDXL_MODEL).base
    assert sd15.pipeline("inpaint").unet is sd15.inpaint_unet
    assert sd15.pipeline("inpaint").unet.config.in_channels == 9
    assert sdxl.inpaint_unet is None and sdxl.pipeline("inpaint").unet is sdxl.pipe.unet


def test_pipelines_share_one_set_of_components(engine):
    components = engine.runtime(SD15_MODEL).base
    img2img = components.pipeline("img2img")
    controlnet = components.pipeline("inpaint", engine.runtime(SD15_MODEL).controlnet("canny"))
    for pipe in (img2img, controlnet):
        assert pipe.vae is components.pipe.vae
        assert pipe.text_encoder is components.pipe.text_encoder
    assert img2img.unet is components.pipe.unet
    assert components.pipeline("img2img") is img2img


@pytest.mark.parametrize("model", MODELS)
def test_person_pass_repaints_only_inside_the_feathered_mask(engine, model):
    source = scene(160, 120, seed=5)
    mask = box_mask(source.size, (100, 30, 130, 100))
    output = engine.run(
        spec(
            model,
            kind="person",
            width=0,
            height=0,
            crop_padding=8,
            mask_blur=2,
            denoising_strength=0.9,
            controlnet="canny",
        ),
        PassInputs(image=source, mask=mask),
    )
    assert output.image.size == source.size
    assert output.metadata["task"] == "inpaint+controlnet"
    x0, y0, x1, y1 = map(int, output.metadata["crop_box"].split(","))
    assert Box(x0, y0, x1, y1).contains(Box(100, 30, 130, 100))
    width, height = map(int, output.metadata["working_size"].split("x"))
    assert min(width, height) == 64 and width % 8 == 0 and height % 8 == 0
    alpha = feather(np.asarray(mask), 2)
    result, original = pixels(output.image), pixels(source)
    assert np.array_equal(result[alpha == 0], original[alpha == 0])
    assert np.abs(result[alpha == 255] - original[alpha == 255]).mean() > 5


def test_person_pass_at_the_image_edge_with_a_skeleton(engine):
    source = scene(128, 96, seed=6)
    mask = box_mask(source.size, (0, 40, 20, 96))
    skeleton = diffusion_pb2.Skeleton(
        keypoints=[
            common_pb2.Keypoint(index=1, x=10, y=50, confidence=1),
            common_pb2.Keypoint(index=8, x=8, y=80, confidence=1),
        ]
    )
    output = engine.run(
        spec(kind="person", width=0, height=0, controlnet="pose", skeletons=[skeleton]),
        PassInputs(image=source, mask=mask),
    )
    x0, y0, x1, y1 = map(int, output.metadata["crop_box"].split(","))
    assert x0 == 0 and y1 == 96
    alpha = feather(np.asarray(mask), 4)
    assert np.array_equal(pixels(output.image)[alpha == 0], pixels(source)[alpha == 0])


def test_person_pass_with_an_empty_mask_returns_the_image(engine):
    source = scene(64, 64)
    output = engine.run(spec(kind="person"), PassInputs(image=source, mask=Image.new("L", source.size, 0)))
    assert output.image.tobytes() == source.tobytes()
    assert any("mask is empty" in w for w in output.warnings)


def test_progress_reports_every_step(engine):
    seen = []
    engine.run(spec(steps=5), progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_cancel_stops_within_one_step(engine):
    cancel = threading.Event()
    seen = []

    def progress(step, total):
        seen.append(step)
        if step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(spec(steps=20), progress=progress, cancel=cancel)
    assert seen == [1, 2]


def test_a_pass_cancelled_before_it_starts_runs_no_step(engine):
    cancel = threading.Event()
    cancel.set()
    seen = []
    with pytest.raises(Cancelled):
        engine.run(spec(), progress=lambda s, t: seen.append(s), cancel=cancel)
    assert seen == []


@pytest.mark.parametrize(
    ("fields", "inputs", "field"),
    [
        ({"kind": "hires2"}, PassInputs(), "spec.kind"),
        ({"model": "sd99"}, PassInputs(), "spec.model"),
        ({"steps": 0}, PassInputs(), "spec.steps"),
        ({"width": 60}, PassInputs(), "spec.width"),
        ({"width": 64, "height": 0}, PassInputs(), "spec.width"),
        ({"controlnet": "scribble"}, PassInputs(image=scene()), "spec.controlnet"),
        ({"controlnet": "canny"}, PassInputs(), "spec.controlnet"),
        ({}, PassInputs(mask=Image.new("L", (64, 64), 255)), "spec.mask"),
        ({}, PassInputs(image=scene(64, 64), mask=Image.new("L", (32, 32), 255)), "spec.mask"),
        ({"kind": "person"}, PassInputs(image=scene()), "spec.mask"),
        ({"denoising_strength": 1.5}, PassInputs(image=scene()), "spec.denoising_strength"),
    ],
)
def test_bad_specs_are_invalid_input_naming_the_field(engine, fields, inputs, field):
    with pytest.raises(InvalidInput) as raised:
        engine.run(spec(**fields), inputs)
    assert field in str(raised.value)


def test_zero_strength_passes_return_their_image_unchanged(engine):
    """denoising_strength=0 set on the spec is the user's "denoise nothing" (unset means each pass's
    default): img2img gives the input at the output size, inpaint and person passes the image itself."""
    source = scene(96, 64, seed=3)
    img2img = engine.run(spec(width=0, height=0, steps=10, denoising_strength=0.0), PassInputs(image=source))
    assert img2img.image.tobytes() == source.tobytes() and img2img.steps_run == 0
    resized = engine.run(spec(width=48, height=32, denoising_strength=0.0), PassInputs(image=source))
    assert resized.image.tobytes() == source.resize((48, 32), Image.Resampling.LANCZOS).tobytes()
    mask = box_mask(source.size, (20, 10, 70, 60))
    inpaint = engine.run(spec(width=0, height=0, denoising_strength=0.0), PassInputs(image=source, mask=mask))
    assert inpaint.image.tobytes() == source.tobytes()
    person = engine.run(
        spec(kind="person", width=0, height=0, denoising_strength=0.0), PassInputs(image=source, mask=mask)
    )
    assert person.image.tobytes() == source.tobytes() and person.steps_run == 0
    # Unset is the default strength, which repaints.
    default = engine.run(spec(kind="person", width=0, height=0), PassInputs(image=source, mask=mask))
    assert default.image.tobytes() != source.tobytes()
