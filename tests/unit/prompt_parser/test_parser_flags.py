"""Inline flags (§4): every flag, where values end, and every error."""

import pytest

from multipass.errors import InvalidInput
from multipass_prompt_parser.language import Limits
from multipass_prompt_parser.parser import parse_prompt

IMAGE = {"input_image_url": "https://example.com/in.png"}


def problems_of(text, params=None, **kwargs):
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(text, params, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def test_all_mask_flags_from_the_spec_example():
    parsed = parse_prompt(
        "astronaut in a garden --mask_prompt foreground --mask_negative clothes hat shoes --mask_invert "
        "--mask_dilate -20 --hires_denoising_strength 0.2",
        IMAGE,
    )
    assert parsed.base_prompt == "astronaut in a garden"
    assert parsed.mask.prompt == "foreground"
    assert parsed.mask.negative == "clothes hat shoes"
    assert parsed.mask.invert is True
    assert (parsed.mask.dilate_pixels, parsed.mask.dilate_percent) == (-20, None)
    assert parsed.hires_denoising_strength == 0.2


def test_multi_word_mask_prompt():
    parsed = parse_prompt("a house --mask_prompt windows door", IMAGE)
    assert parsed.mask.prompt == "windows door"
    assert parsed.mask.negative == "" and parsed.mask.invert is False


def test_no_mask_flags_means_no_mask_and_default_hires_strength():
    parsed = parse_prompt("a house")
    assert parsed.mask is None
    assert parsed.hires_denoising_strength == 0.4
    assert (parsed.tiled_upscale, parsed.only_upscale) == (False, False)


@pytest.mark.parametrize(
    ("written", "pixels", "percent"),
    [
        ("20", 20, None),
        ("-20", -20, None),
        ("+8", 8, None),
        ("0", 0, None),
        ("-20%", None, -20.0),
        ("12.5%", None, 12.5),
        ("-20 %", None, -20.0),
        ("100%", None, 100.0),
        ("-2048", -2048, None),
    ],
)
def test_mask_dilate_in_pixels_or_percent(written, pixels, percent):
    parsed = parse_prompt(f"a house --mask_prompt door --mask_dilate {written}", IMAGE)
    assert (parsed.mask.dilate_pixels, parsed.mask.dilate_percent) == (pixels, percent)


@pytest.mark.parametrize("written", ["abc", "2049", "-2049", "101%", "-150%", "1.5", "20px", "%"])
def test_mask_dilate_out_of_range_or_malformed(written):
    found = problems_of(f"a house --mask_prompt door --mask_dilate {written}", IMAGE)
    assert repr(written) in found["flag --mask_dilate"]
    assert "-2048..2048" in found["flag --mask_dilate"] and "-100%..100%" in found["flag --mask_dilate"]


def test_mask_dilate_pixel_bound_follows_the_size_cap():
    found = problems_of("a house --mask_prompt door --mask_dilate 1100", IMAGE, limits=Limits(max_size=1024))
    assert "-1024..1024" in found["flag --mask_dilate"]


@pytest.mark.parametrize(("written", "value"), [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (".5", 0.5)])
def test_hires_denoising_strength(written, value):
    parsed = parse_prompt(f"a house --hires_denoising_strength {written}\nhires_fix=true")
    assert parsed.hires_denoising_strength == value


@pytest.mark.parametrize("written", ["1.5", "-0.1", "x", "nan", "inf"])
def test_hires_denoising_strength_out_of_range(written):
    found = problems_of(f"a house --hires_denoising_strength {written}")
    assert repr(written) in found["flag --hires_denoising_strength"]
    assert "0..1" in found["flag --hires_denoising_strength"]


def test_tiled_and_only_upscale():
    parsed = parse_prompt("--only_upscale --tiled_upscale", IMAGE)
    assert (parsed.only_upscale, parsed.tiled_upscale) == (True, True)
    assert parsed.base_prompt == ""


def test_flags_anywhere_and_text_after_them_on_the_next_line():
    parsed = parse_prompt(
        "a house --mask_prompt door\nat dusk BREAK BREAK ohwx man --mask_invert\nsmiling", IMAGE
    )
    assert parsed.base_prompt == "a house at dusk"
    assert parsed.persons[0].prompt == "ohwx man smiling"
    assert parsed.mask.prompt == "door" and parsed.mask.invert


def test_flag_value_stops_at_inline_break_and_at_a_tag():
    parsed = parse_prompt(
        "a street --mask_prompt person BREAK BREAK ohwx man --mask_negative hat <lora:1:1>", IMAGE
    )
    assert parsed.mask.prompt == "person"
    assert parsed.mask.negative == "hat"
    assert parsed.persons[0].prompt == "ohwx man"
    assert parsed.persons[0].loras[0].tune_id == "1"


def test_double_hyphen_inside_words_is_text():
    parsed = parse_prompt("a semi--gloss finish, a -- pause")
    assert parsed.base_prompt == "a semi--gloss finish, a -- pause"


def test_unknown_flag_is_named_with_the_closest_flag():
    found = problems_of("a house --mask_promt door")
    assert found["flag --mask_promt"] == "unknown flag --mask_promt; did you mean --mask_prompt?"


def test_unknown_flag_without_similar_name_lists_the_flags():
    found = problems_of("a house --zoom 2")
    assert "--zoom" in found["flag --zoom"] and "--mask_prompt" in found["flag --zoom"]


def test_a_parameter_written_as_a_flag_is_explained():
    found = problems_of("a house --ar 16:9")
    assert "ar=VALUE in the parameter block" in found["flag --ar"]


@pytest.mark.parametrize("name", ["mask_prompt", "mask_negative", "mask_dilate", "hires_denoising_strength"])
def test_flag_missing_its_value(name):
    found = problems_of(f"a house --{name}\nmore text", IMAGE)
    assert f"--{name} needs a value" in found[f"flag --{name}"]


@pytest.mark.parametrize("name", ["mask_invert", "tiled_upscale", "only_upscale"])
def test_valueless_flag_followed_by_text(name):
    found = problems_of(f"a house --mask_prompt door --{name} extra words", IMAGE)
    assert "takes no value" in found[f"flag --{name}"] and "'extra words'" in found[f"flag --{name}"]


def test_flag_given_twice():
    found = problems_of("a house --mask_prompt door --mask_prompt window", IMAGE)
    assert "given twice" in found["flag --mask_prompt"]
    found = problems_of("a house --mask_prompt door --mask_dilate 2 --mask_dilate 3%", IMAGE)
    assert "given twice" in found["flag --mask_dilate"]


def test_flag_repeated_after_a_bad_value_is_still_reported_twice():
    found = problems_of("a house --hires_denoising_strength 7 --hires_denoising_strength 0.2")
    assert "given twice" in found["flag --hires_denoising_strength"]


@pytest.mark.parametrize(
    ("text", "field", "written"),
    [
        ("scene BREAK--mask_invert BREAK ohwx woman <lora:1>", "flag --mask_invert", "BREAK--mask_invert"),
        ("a room--mask_prompt person", "flag --mask_prompt", "room--mask_prompt"),
        ("--mask_prompt person--mask_invert", "flag --mask_invert", "person--mask_invert"),
        ("a cat\nsmall--tiled_upscale", "flag --tiled_upscale", "small--tiled_upscale"),
    ],
)
def test_a_known_flag_glued_to_a_word_is_an_error_naming_it(text, field, written):
    found = problems_of(text, IMAGE)
    assert found[field] == (
        f"{field[5:]} is glued to the word before it in {written!r}; put a space before the flag"
    )


@pytest.mark.parametrize("text", ["semi--gloss paint", "a--mask_promptx b", "x--y"])
def test_double_hyphens_inside_words_that_are_no_flags_stay_text(text):
    assert parse_prompt(text).base_prompt == text


@pytest.mark.parametrize("value", ["٥", "５", "-２0", "１%"])
def test_dilate_takes_ascii_digits_only(value):
    found = problems_of(f"a cat --mask_prompt sofa --mask_dilate {value}", IMAGE)
    assert found["flag --mask_dilate"].startswith(f"got {value!r}; allowed:")


def test_zero_strengths_are_kept_and_said_what_they_do():
    parsed = parse_prompt("a house --hires_denoising_strength 0\nhires_fix=true")
    assert parsed.hires_denoising_strength == 0.0
    assert any("only upscales" in w for w in parsed.warnings)
    parsed = parse_prompt("a house BREAK BREAK ohwx man\ndenoising_strength=0", IMAGE)
    assert parsed.params.denoising_strength == 0.0 and "denoising_strength" in parsed.explicit_params
    assert any(w.startswith("denoising_strength=0: nothing is denoised") for w in parsed.warnings)
    assert not any("denoising" in w for w in parse_prompt("a house\ndenoising_strength=0.3", IMAGE).warnings)


def test_a_flag_written_name_equals_value_reads_as_name_space_value():
    # "--mask_prompt=windows door" once segmented "=windows door" and "--mask_dilate=-20" was refused.
    parsed = parse_prompt(
        "a house --mask_prompt=windows door --mask_negative = curtains --mask_dilate=-20% --mask_invert= "
        "--hires_denoising_strength=0.3\nhires_fix=true",
        IMAGE,
    )
    assert parsed.base_prompt == "a house"
    mask = parsed.mask
    assert (mask.prompt, mask.negative, mask.invert) == ("windows door", "curtains", True)
    assert (parsed.mask.dilate_pixels, parsed.mask.dilate_percent) == (None, -20.0)
    assert parsed.hires_denoising_strength == 0.3
    assert parse_prompt("a house --mask_prompt=door --mask_dilate=-20", IMAGE).mask.dilate_pixels == -20


def test_a_bad_value_after_equals_is_named_without_the_equals():
    found = problems_of("a house --mask_prompt door --mask_dilate=abc", IMAGE)
    assert found["flag --mask_dilate"].startswith("got 'abc'; allowed:")
    assert "needs a value" in problems_of("a house --mask_prompt=", IMAGE)["flag --mask_prompt"]


@pytest.mark.parametrize(
    ("text", "field", "meant"),
    [
        ("a house --mask_prompt door --mask-invert", "flag --mask-invert", "--mask_invert"),
        ("a house --mask-prompt door", "flag --mask-prompt", "--mask_prompt"),
        ("a house --only-upscale", "flag --only-upscale", "--only_upscale"),
    ],
)
def test_a_flag_name_written_with_hyphens_is_named_as_written_with_the_flag_meant(text, field, meant):
    # "--mask-invert" was reported as "unknown flag --mask; did you mean --mask_prompt?".
    found = problems_of(text, IMAGE)
    assert found[field] == f"unknown flag {field[5:]}; flag names use underscores: {meant}"


@pytest.mark.parametrize("dash", ["\u2014", "\u2013", "\u2212"])
def test_a_known_flag_written_with_a_typographic_dash_is_an_error(dash):
    # An editor's "—mask_prompt" once reached the encoder as text and the job ran without its mask.
    found = problems_of(f"a house {dash}mask_prompt person {dash}-mask_invert", IMAGE)
    assert found["flag --mask_prompt"] == (
        f"--mask_prompt is written {dash + 'mask_prompt'!r}, with a typographic dash; write two hyphens: "
        "--mask_prompt"
    )
    assert "typographic dash" in found["flag --mask_invert"]


def test_dashes_before_other_words_stay_text():
    text = "a house \u2014 sunny, 1990\u20132000, \u2014masked ball"
    assert parse_prompt(text).base_prompt == text
