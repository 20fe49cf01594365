"""Rules across parts: negative split, keep-background, input-image needs, warnings, weighted syntax,
length limit, and the documents of prompt-language.md."""

from pathlib import Path

import pytest

from multipass.errors import InvalidInput
from multipass_prompt_parser.language import Limits
from multipass_prompt_parser.parser import parse_prompt

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
IMAGE = {"input_image_url": "https://example.com/in.png"}

SPEC_DOCUMENT = """realistic digital painting, astronaut in a garden on a spring day, ... --mask_prompt foreground --mask_negative clothes --mask_invert --mask_dilate -20 --hires_denoising_strength 0.2
num_images=1
negative_prompt=clay, text, watermark, padding, cropped, typography
seed=
steps=30
cfg_scale=
controlnet=pose
input_image_url=https://example.com/photo.jpg
scheduler=dpm++sde_karras
super_resolution=true
hires_fix=true
ar=1:1
"""


def problems_of(text, params=None, **kwargs):
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(text, params, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def test_the_spec_document():
    parsed = parse_prompt(SPEC_DOCUMENT)
    assert parsed.base_prompt == "realistic digital painting, astronaut in a garden on a spring day, ..."
    assert parsed.multi_pass is False and parsed.keep_background is False
    assert parsed.mask.prompt == "foreground" and parsed.mask.negative == "clothes"
    assert parsed.mask.invert and parsed.mask.dilate_pixels == -20
    assert parsed.hires_denoising_strength == 0.2
    p = parsed.params
    assert (p.num_images, p.seed, p.steps, p.cfg_scale, p.scheduler) == (1, None, 30, 7.0, "dpm++sde_karras")
    assert (p.controlnet, p.controlnet_conditioning_scale, p.input_image_url) == (
        "pose",
        1.0,
        "https://example.com/photo.jpg",
    )
    assert (p.super_resolution, p.hires_fix, p.w, p.h) == (True, True, 512, 512)
    assert parsed.base_effective_negative_prompt == "clay, text, watermark, padding, cropped, typography"
    assert parsed.warnings == ()


def test_example_files_parse():
    gala = parse_prompt((EXAMPLES / "multi-person.prompt").read_text())
    assert [[t.tune_id for t in p.loras] for p in gala.persons] == [["849330"], ["861629"]]
    assert gala.base_prompt.startswith("a grand ballroom") and gala.common_prompt.startswith("elegant")
    keep = parse_prompt((EXAMPLES / "keep-background.prompt").read_text())
    assert keep.keep_background and len(keep.persons) == 2
    single = parse_prompt((EXAMPLES / "single-pass.prompt").read_text())
    assert single.multi_pass is False and (single.params.w, single.params.h) == (512, 768)
    masked = parse_prompt((EXAMPLES / "masked.prompt").read_text())
    assert masked.mask.prompt == "foreground"
    assert all(not p.warnings for p in (gala, keep, single, masked))


def test_negative_without_break_applies_to_every_pass():
    parsed = parse_prompt("a park BREAK light BREAK ohwx man\nnegative_prompt=blurry, text")
    assert (parsed.negative_base, parsed.negative_common) == ("", "blurry, text")
    assert parsed.base_effective_negative_prompt == "blurry, text"
    assert parsed.persons[0].negative_prompt == ""
    assert parsed.persons[0].effective_negative_prompt == "blurry, text"


def test_negative_split_by_break():
    parsed = parse_prompt(
        "a park BREAK light BREAK ohwx man BREAK ohwx woman\nnegative_prompt=people BREAK lowres, BREAK beard"
    )
    assert (parsed.negative_base, parsed.negative_common) == ("people", "lowres")
    assert parsed.base_effective_negative_prompt == "people, lowres"
    assert [(p.negative_prompt, p.effective_negative_prompt) for p in parsed.persons] == [
        ("beard", "beard, lowres"),
        ("", "lowres"),
    ]


def test_negative_with_more_person_segments_than_persons():
    found = problems_of("a park BREAK light BREAK ohwx man\nnegative_prompt=a BREAK b BREAK c BREAK d")
    assert "2 person segments but the prompt has 1 person" in found["params.negative_prompt"]


def test_negative_break_in_a_single_pass_prompt():
    parsed = parse_prompt("a park\nnegative_prompt=people BREAK lowres")
    assert parsed.base_effective_negative_prompt == "people, lowres"


def test_keep_background_with_input_image_url():
    parsed = parse_prompt("BREAK BREAK ohwx woman <lora:1:1> BREAK ohwx man <lora:2:1>", IMAGE)
    assert parsed.keep_background is True
    assert parsed.base_effective_prompt == ""
    assert len(parsed.persons) == 2


def test_keep_background_with_an_uploaded_input_image():
    assert parse_prompt("BREAK BREAK ohwx woman <lora:1:1>", has_input_image=True).keep_background is True


def test_no_keep_background_without_input_image_or_with_text():
    no_image = parse_prompt("BREAK BREAK ohwx woman <lora:1:1>")
    assert no_image.keep_background is False
    assert any("empty prompt" in w for w in no_image.warnings)
    assert parse_prompt("a park BREAK BREAK ohwx woman <lora:1:1>", IMAGE).keep_background is False
    assert parse_prompt("BREAK soft light BREAK ohwx woman <lora:1:1>", IMAGE).keep_background is False


def test_keep_background_warns_about_unused_base_tags_and_mask():
    parsed = parse_prompt("<lora:9:1> --mask_prompt person BREAK BREAK ohwx woman <lora:1:1>", IMAGE)
    assert parsed.keep_background
    assert any("<lora:9:1> are unused" in w for w in parsed.warnings)
    assert any("--mask_prompt mask is unused" in w for w in parsed.warnings)


def test_keep_background_warns_that_the_base_passs_controlnet_and_mask_image_are_unused():
    parsed = parse_prompt(
        "BREAK BREAK ohwx woman <lora:1:1>",
        {
            "input_image_url": "https://example.com/in.png",
            "mask_image_url": "https://example.com/mask.png",
            "controlnet": "canny",
            "controlnet_conditioning_scale": "0.5",
        },
    )
    assert parsed.keep_background
    assert (
        "keep-background mode skips the base pass, so controlnet=canny, controlnet_conditioning_scale are "
        "unused (the persons are repainted on the input image itself)"
    ) in parsed.warnings
    assert any("the mask image is unused" in w for w in parsed.warnings)
    # With a scene to generate, the base pass takes them: no such warning.
    generated = parse_prompt(
        "a park BREAK BREAK ohwx woman <lora:1:1>",
        {"input_image_url": "https://example.com/in.png", "controlnet": "canny"},
    )
    assert not any("keep-background" in w for w in generated.warnings)


def test_controlnet_needs_an_input_image():
    found = problems_of("a park", {"controlnet": "canny"})
    assert "controlnet=canny needs an input image" in found["params.controlnet"]
    assert "needs an input image" in problems_of("a park", {"controlnet": "pose"})["params.controlnet"]
    assert parse_prompt("a park", {"controlnet": "canny"}, has_input_image=True).params.controlnet == "canny"


def test_pose_controlnet_with_persons_uses_the_default_layout():
    parsed = parse_prompt(
        "a park BREAK BREAK ohwx man <lora:1:1> BREAK ohwx woman <lora:2:1>", {"controlnet": "pose"}
    )
    assert parsed.params.controlnet == "pose"
    assert any("default layout of 2 standing figures" in w for w in parsed.warnings)


def test_composition_and_a_base_faceid_tag_are_refused_but_a_persons_faceid_is_not():
    params = {"controlnet": "composition"}
    found = problems_of("a park <faceid:7:1>", params, has_input_image=True)
    assert "controlnet=composition and <faceid:7:1>" in found["params.controlnet"]
    common = problems_of(
        "a park BREAK photo <faceid:7:0.5> BREAK ohwx man <lora:1:1>", params, has_input_image=True
    )
    assert "<faceid:7:0.5>" in common["params.controlnet"]
    parsed = parse_prompt("a park BREAK BREAK ohwx man <faceid:7:1>", params, has_input_image=True)
    assert parsed.params.controlnet == "composition"
    assert parse_prompt("a park", params, has_input_image=True).params.controlnet == "composition"


def test_mask_modifiers_need_mask_prompt():
    found = problems_of("a park --mask_negative hat --mask_invert --mask_dilate 3%", IMAGE)
    assert set(found) == {"flag --mask_negative", "flag --mask_invert", "flag --mask_dilate"}
    assert all("--mask_prompt is not given" in d for d in found.values())


def test_mask_prompt_needs_an_input_image():
    assert "needs an input image" in problems_of("a park --mask_prompt bench")["flag --mask_prompt"]


def test_mask_prompt_and_mask_image_together():
    found = problems_of(
        "a park --mask_prompt bench", {**IMAGE, "mask_image_url": "https://example.com/m.png"}
    )
    assert "keep one of them" in found["flag --mask_prompt"]
    assert (
        "keep one"
        in problems_of("a park --mask_prompt bench", IMAGE, has_mask_image=True)["flag --mask_prompt"]
    )


def test_mask_image_needs_an_input_image():
    found = problems_of("a park", {"mask_image_url": "https://example.com/m.png"})
    assert "needs an input image" in found["params.mask_image_url"]
    assert "needs an input image" in problems_of("a park", has_mask_image=True)["params.mask_image_url"]


def test_only_upscale():
    parsed = parse_prompt("--only_upscale", IMAGE)
    assert parsed.only_upscale and parsed.warnings == ()
    assert any("text is ignored" in w for w in parse_prompt("a park --only_upscale", IMAGE).warnings)
    assert "needs an input image" in problems_of("--only_upscale")["flag --only_upscale"]
    upscale_only = parse_prompt("BREAK BREAK ohwx man --only_upscale", IMAGE)
    assert upscale_only.only_upscale and not upscale_only.keep_background


def test_only_upscale_names_the_options_it_ignores():
    parsed = parse_prompt(
        "--only_upscale",
        {**IMAGE, "face_correct": "true", "hires_fix": "true", "steps": "20", "num_images": "3"},
    )
    assert parsed.warnings == (
        "--only_upscale: hires_fix, face_correct, steps have no effect; the input image is only upscaled "
        "(film_grain and color_grading still apply)",
        "--only_upscale: num_images=3 upscales the same input 3 times, to the same result",
    )
    assert parse_prompt("--only_upscale", {**IMAGE, "film_grain": "true"}).warnings == ()


def test_only_upscale_names_the_mask_and_encoder_options_it_ignores():
    # --mask_prompt, a mask image, --hires_denoising_strength, use_lpw and the ControlNet settings were
    # accepted without a word while the chain only upscales.
    settings = {"use_lpw": "true", "controlnet_conditioning_scale": "0.5", "controlnet_txt2img": "true"}
    parsed = parse_prompt(
        "--only_upscale --mask_prompt person --mask_invert --hires_denoising_strength 0.3",
        {**IMAGE, **settings},
    )
    assert (
        "--only_upscale: controlnet_conditioning_scale, controlnet_txt2img, use_lpw, --mask_prompt, "
        "--hires_denoising_strength have no effect; the input image is only upscaled "
        "(film_grain and color_grading still apply)"
    ) in parsed.warnings
    masked = parse_prompt("--only_upscale", {**IMAGE, "mask_image_url": "https://example.com/m.png"})
    assert masked.warnings == (
        "--only_upscale: the mask image has no effect; the input image is only upscaled "
        "(film_grain and color_grading still apply)",
    )


@pytest.mark.parametrize("name", ["hires_fix", "inpaint_faces"])
def test_settings_astria_ties_to_super_resolution_are_accepted_alone_with_a_warning(name):
    alone = parse_prompt("a park", {name: "true"})
    assert getattr(alone.params, name) is True and alone.params.super_resolution is False
    assert any(w.startswith(f"{name}=true without super_resolution=true") for w in alone.warnings)
    assert parse_prompt("a park", {name: "true", "super_resolution": "true"}).warnings == ()


def test_warnings_for_settings_without_effect():
    warnings = parse_prompt(
        "a park --hires_denoising_strength 0.3 --tiled_upscale",
        {"controlnet_conditioning_scale": "0.5", "controlnet_txt2img": "true", "face_swap": "true"},
    ).warnings
    for words in (
        "--hires_denoising_strength has no effect",
        "--tiled_upscale has no effect",
        "controlnet_conditioning_scale is ignored",
        "controlnet_txt2img is ignored",
        "nothing to swap",
    ):
        assert any(words in w for w in warnings), words


@pytest.mark.parametrize(
    ("text", "params", "why"),
    [
        ("a park", {}, "nothing starts from an image (no input image, no persons)"),
        ("a park", {**IMAGE, "controlnet": "canny", "controlnet_txt2img": "true"}, "controlnet_txt2img=true"),
    ],
)
def test_a_denoising_strength_no_pass_uses_is_said_to_have_no_effect(text, params, why):
    # It was accepted without a word while every pass generated from noise.
    for strength in ("0.3", "0"):
        warnings = parse_prompt(text, {**params, "denoising_strength": strength}).warnings
        (said,) = [w for w in warnings if "denoising_strength" in w]
        assert said.startswith("denoising_strength has no effect: ") and why in said


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("a park", IMAGE),
        ("a park BREAK BREAK ohwx man", {}),
        ("a park --mask_prompt bench", {**IMAGE, "controlnet": "canny", "controlnet_txt2img": "true"}),
        (
            "a park",
            {
                **IMAGE,
                "controlnet": "canny",
                "controlnet_txt2img": "true",
                "controlnet_conditioning_scale": "0",
            },
        ),
    ],
)
def test_a_denoising_strength_some_pass_uses_has_no_such_warning(text, params):
    warnings = parse_prompt(text, {**params, "denoising_strength": "0.3"}).warnings
    assert not any("denoising_strength has no effect" in w for w in warnings)


def test_a_conditioning_scale_without_controlnet_is_not_ignored_where_it_scales_the_layout_pose():
    # With persons and no input image the base pass is conditioned on the default layout's pose, which
    # the scale scales (0: off); the job once said the scale was ignored.
    persons = "a park BREAK BREAK ohwx man"
    assert not any(
        "conditioning" in w for w in parse_prompt(persons, {"controlnet_conditioning_scale": "0.5"}).warnings
    )
    assert (
        "controlnet_conditioning_scale=0: the base pass is not conditioned on the pose of the default person layout"
        in (parse_prompt(persons, {"controlnet_conditioning_scale": "0"}).warnings)
    )
    ignored = "controlnet_conditioning_scale is ignored without controlnet"
    for text, params in (
        (persons, {"controlnet": "none"}),
        (persons, IMAGE),
        ("a park", {}),
    ):
        warnings = parse_prompt(text, {**params, "controlnet_conditioning_scale": "0.5"}).warnings
        assert ignored in warnings, (text, params)


WEIGHTED = r"a (red:1.3) fox, [blurry], ((masterpiece)), \(escaped\), (old photo:0.8) BREAK (soft light:1.1)"


def test_weighted_syntax_survives_untouched_with_use_lpw():
    parsed = parse_prompt(WEIGHTED + "\nuse_lpw=true\nnegative_prompt=(ugly:1.4), [bad]")
    assert parsed.base_prompt == r"a (red:1.3) fox, [blurry], ((masterpiece)), \(escaped\), (old photo:0.8)"
    assert parsed.common_prompt == "(soft light:1.1)"
    assert parsed.base_effective_negative_prompt == "(ugly:1.4), [bad]"
    assert not any("use_lpw" in w for w in parsed.warnings)


def test_weighted_syntax_without_use_lpw_warns():
    parsed = parse_prompt(WEIGHTED)
    assert parsed.base_prompt.startswith("a (red:1.3) fox")
    assert any("'(red:1.3)' needs use_lpw=true" in w for w in parsed.warnings)


def test_empty_prompt():
    assert "no text" in problems_of("")["text"]
    assert "no text" in problems_of("  \n BREAK  ")["text"]
    assert "no text" in problems_of("<lora:1:1>")["text"]


def test_prompt_length_limit():
    limits = Limits(max_prompt_chars=100)
    assert parse_prompt("x" * 100, limits=limits).base_prompt == "x" * 100
    found = problems_of("x" * 101, limits=limits)
    assert found == {"text": "the prompt document has 101 characters; at most 100 are allowed"}
    assert "4001 characters; at most 4000" in problems_of("y" * 4001)["text"]


def test_a_zero_conditioning_scale_says_the_controlnet_does_nothing():
    parsed = parse_prompt("a park", {**IMAGE, "controlnet": "canny", "controlnet_conditioning_scale": "0"})
    assert (
        "controlnet_conditioning_scale=0: controlnet=canny has no effect; no ControlNet runs"
        in parsed.warnings
    )
