"""controlnet=reference: reference-only attention on the tiny models (txt2img, img2img, inpaint, SDXL)."""

from __future__ import annotations

import pytest
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, pixels, scene, spec

from multipass.images import encode_png
from multipass.v1 import diffusion_pb2
from multipass_diffusion import reference_attention
from multipass_diffusion.passes.context import PassInputs

MODELS = [SD15_MODEL, SDXL_MODEL]


def reference(model: str, **fields) -> diffusion_pb2.PassSpec:
    return spec(model, controlnet="reference", controlnet_txt2img=True, **fields)


@pytest.mark.parametrize("model", MODELS)
def test_the_reference_steers_txt2img_and_runs_repeat(engine, model):
    plain = engine.run(spec(model))
    first = engine.run(reference(model), PassInputs(image=scene(64, 64, seed=1)))
    again = engine.run(reference(model), PassInputs(image=scene(64, 64, seed=1)))
    other = engine.run(reference(model), PassInputs(image=scene(64, 64, seed=2)))
    assert first.metadata["task"] == "txt2img+reference"
    assert not again.cache_hit and encode_png(first.image) == encode_png(again.image)  # noise from the seed
    assert encode_png(first.image) != encode_png(plain.image)
    assert encode_png(first.image) != encode_png(other.image)  # the reference, not only its presence
    # The pipeline is left as it was: the plain pass gives the same bytes as before.
    assert encode_png(engine.run(spec(model)).image) == encode_png(plain.image)
    unet = engine.runtime(model).base.pipe.unet
    assert not any(
        isinstance(p, reference_attention.ReferenceAttnProcessor) for p in unet.attn_processors.values()
    )
    assert not unet._forward_pre_hooks


def test_the_scale_blends_toward_the_plain_attention(engine):
    source = scene(64, 64, seed=1)
    plain = pixels(engine.run(spec()).image).astype(float)
    outputs = {
        scale: pixels(
            engine.run(
                reference(SD15_MODEL, controlnet_conditioning_scale=scale), PassInputs(image=source)
            ).image
        ).astype(float)
        for scale in (0.25, 1.0)
    }
    assert abs(outputs[0.25] - plain).mean() < abs(outputs[1.0] - plain).mean()


def test_reference_in_img2img_and_inpaint(engine):
    source = scene(64, 64)
    img2img = engine.run(
        spec(controlnet="reference", denoising_strength=0.6, steps=6), PassInputs(image=source)
    )
    assert img2img.metadata["task"] == "img2img+reference" and img2img.steps_run == 3
    # The 9-channel inpainting UNet gets the real call's mask channels after the reference latents.
    inpainted = engine.run(
        spec(controlnet="reference", denoising_strength=0.8),
        PassInputs(image=source, mask=box_mask((64, 64), (16, 16, 48, 48))),
    )
    assert inpainted.metadata["task"] == "inpaint+reference"
    outside = pixels(inpainted.image)[:8, :8].astype(int) - pixels(source)[:8, :8].astype(int)
    assert abs(outside).max() <= 2  # pasted back inside the mask only


def test_reference_needs_an_image_and_is_always_served(engine):
    from multipass.errors import InvalidInput

    with pytest.raises(InvalidInput, match="controlnet=reference needs an input image"):
        engine.run(reference(SD15_MODEL))
    assert reference_attention.CAPABILITY in engine.runtime(SD15_MODEL).capabilities()
