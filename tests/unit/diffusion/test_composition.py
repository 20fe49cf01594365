"""controlnet=composition: the IP Composition Adapter on the tiny models, attached for its call only."""

from __future__ import annotations

import shutil

import pytest
from diffusion_testkit import MODELS_ROOT, SD15_MODEL, SDXL_MODEL, box_mask, pixels, scene, spec

from multipass.errors import FailedPrecondition, InvalidInput
from multipass.images import encode_png
from multipass.v1 import prompt_pb2
from multipass_dev.tiny_models.ip_adapters import composition_path, encoder_path, write_composition_adapter
from multipass_diffusion import composition
from multipass_diffusion.passes.context import PassInputs

MODELS = [SD15_MODEL, SDXL_MODEL]


def composed(model: str = SD15_MODEL, **fields):
    fields.setdefault("controlnet_txt2img", True)
    return spec(model, controlnet="composition", **fields)


def processors(unet) -> list[str]:
    return sorted(type(p).__name__ for p in unet.attn_processors.values())


@pytest.mark.parametrize("model", MODELS)
def test_the_layout_image_steers_txt2img_and_the_model_is_left_as_it_was(engine, model):
    unet = engine.runtime(model).base.pipe.unet
    own = processors(unet)
    plain = engine.run(spec(model))
    first = engine.run(composed(model), PassInputs(image=scene(64, 64, seed=1)))
    again = engine.run(composed(model), PassInputs(image=scene(64, 64, seed=1)))
    other = engine.run(composed(model), PassInputs(image=scene(64, 64, seed=2)))
    assert first.metadata["task"] == "txt2img+composition"
    assert not again.cache_hit and encode_png(first.image) == encode_png(again.image)
    assert encode_png(first.image) != encode_png(plain.image)
    assert encode_png(first.image) != encode_png(other.image)  # the picture counts, not only its presence
    # After the call the UNet has its own processors and no image projection: the plain pass is unchanged.
    assert processors(unet) == own and unet.encoder_hid_proj is None
    assert encode_png(engine.run(spec(model)).image) == encode_png(plain.image)
    assert {composition.CAPABILITY, f"{composition.CAPABILITY}:{model}"} <= set(
        engine.runtime(model).capabilities()
    )


def test_the_scale_blends_toward_the_plain_model(engine):
    source = scene(64, 64, seed=3)
    plain = pixels(engine.run(spec()).image).astype(float)
    distance = {
        scale: abs(
            pixels(
                engine.run(composed(controlnet_conditioning_scale=scale), PassInputs(image=source)).image
            ).astype(float)
            - plain
        ).mean()
        for scale in (0.05, 1.0)
    }
    assert distance[0.05] < distance[1.0]


def test_composition_in_img2img_and_inpaint_and_from_a_control_image(engine):
    source = scene(64, 64, seed=4)
    img2img = engine.run(
        spec(controlnet="composition", denoising_strength=0.6, steps=6), PassInputs(image=source)
    )
    assert img2img.metadata["task"] == "img2img+composition" and img2img.steps_run == 3
    inpainted = engine.run(
        spec(controlnet="composition", denoising_strength=0.8),
        PassInputs(image=source, mask=box_mask((64, 64), (16, 16, 48, 48))),
    )
    assert inpainted.metadata["task"] == "inpaint+composition"  # the 9-channel UNet got the layers too
    outside = pixels(inpainted.image)[:8, :8].astype(int) - pixels(source)[:8, :8].astype(int)
    assert abs(outside).max() <= 2
    from_control = engine.run(composed(), PassInputs(control_image=scene(64, 64, seed=5)))
    assert from_control.metadata["task"] == "txt2img+composition"


def test_a_faceid_tag_and_composition_on_one_pass_are_refused_naming_both(engine):
    tagged = composed(loras=[prompt_pb2.LoraRef(tune_id="40", weight=1.0, kind="faceid")])
    with pytest.raises(InvalidInput) as caught:
        engine.run(tagged, PassInputs(image=scene(64, 64)))
    assert caught.value.violations[0].field == "spec.controlnet"
    assert "<faceid:...>" in caught.value.violations[0].description


def test_composition_needs_an_image(engine):
    with pytest.raises(InvalidInput, match="controlnet=composition needs an input image"):
        engine.run(composed())


def _model_dir_without(tmp_path, *, adapter: bool, encoder: bool):
    """A copy of the tiny model directory's diffusion models with the adapter or the encoder left out."""
    root = tmp_path / "models"
    shutil.copytree(MODELS_ROOT / "diffusion", root / "diffusion", symlinks=True)
    if not adapter:
        shutil.rmtree(composition_path(root / "diffusion", "sd15").parent)
    if not encoder:
        shutil.rmtree(encoder_path(root / "diffusion"))
    return root


@pytest.mark.parametrize("adapter, encoder", [(False, True), (True, False)])
def test_what_is_not_installed_is_named_and_not_reported(tmp_path, adapter, encoder):
    root = _model_dir_without(tmp_path, adapter=adapter, encoder=encoder)
    assert not composition.installed(root, "sd15")
    missing = composition.missing_files(root, "sd15")
    expected = (
        composition_path(root / "diffusion", "sd15") if not adapter else encoder_path(root / "diffusion")
    )
    assert str(missing[0]).startswith(str(expected))
    assert composition.installed(root, "sdxl") == encoder  # the encoder serves both families


def test_an_adapter_that_does_not_fit_is_a_failed_precondition_naming_the_file(engine, tmp_path):
    import torch  # noqa: F401 - the writer needs it loaded

    runtime = engine.runtime(SD15_MODEL)
    # An SDXL-width adapter in the SD1.5 folder: its projection does not fit the SD1.5 UNet.
    wrong = write_composition_adapter(
        engine.runtime(SDXL_MODEL).base.pipe.unet, tmp_path / "wrong.safetensors", seed=1
    )
    from multipass_diffusion.ip_layers import read_weights

    state = read_weights(wrong, "IP Composition Adapter")
    with pytest.raises(FailedPrecondition, match="does not fit the UNet"):
        composition.check(wrong, state, 32, runtime.base.cross_attention_dim)
    with pytest.raises(FailedPrecondition, match="reads 32-d image features"):
        composition.check(wrong, state, 1280, 64)
    faceid_file = (
        MODELS_ROOT / "diffusion" / "ip_adapter" / "sd15" / "faceid" / "ip-adapter-faceid.safetensors"
    )
    with pytest.raises(FailedPrecondition, match="not an IP-Adapter Plus file"):
        composition.check(faceid_file, read_weights(faceid_file, "x"), 32, 32)


def test_the_cache_key_holds_the_adapters_files(engine, monkeypatch):
    source = scene(64, 64, seed=6)
    first = engine.run(composed(), PassInputs(image=source))
    monkeypatch.setattr(composition, "fingerprint", lambda model_dir, family: "composition:other-files")
    replaced = engine.run(composed(), PassInputs(image=source))
    assert first.spec_hash != replaced.spec_hash  # new adapter files never reuse an old output
