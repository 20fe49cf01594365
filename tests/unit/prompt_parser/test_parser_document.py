"""The trailing name=value block (§1): where it starts, unknown and repeated names, empty values."""

import pytest

from multipass.errors import InvalidInput
from multipass_prompt_parser.document import split_document
from multipass_prompt_parser.parser import parse_prompt
from multipass_prompt_parser.problems import Problems


def problems_of(text, params=None, **kwargs):
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(text, params, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def test_block_is_the_run_of_trailing_name_value_lines():
    document = split_document("a cat on a sofa\nsteps=20\n\nseed=5\n\n", Problems())
    assert document.text == "a cat on a sofa"
    assert document.block == {"steps": "20", "seed": "5"}


def test_text_lines_with_equals_signs_stay_text():
    parsed = parse_prompt("a sign that says x = y\n2+2=4 on a blackboard\nsteps=12")
    assert parsed.base_prompt == "a sign that says x = y 2+2=4 on a blackboard"
    assert parsed.params.steps == 12


def test_name_value_line_above_text_is_text():
    parsed = parse_prompt("steps=12\na cat")
    assert parsed.base_prompt == "steps=12 a cat"
    assert parsed.params.steps == 30
    assert parsed.explicit_params == ()


def test_spaces_around_equals_and_crlf_line_ends():
    parsed = parse_prompt("a cat\r\nsteps = 12\r\ncfg_scale=3.5\r\n")
    assert (parsed.base_prompt, parsed.params.steps, parsed.params.cfg_scale) == ("a cat", 12, 3.5)


def test_empty_value_means_unset():
    parsed = parse_prompt("a cat\nseed=\ncfg_scale=\nsteps=")
    assert parsed.params.seed is None
    assert parsed.params.cfg_scale == 7.0
    assert parsed.params.steps == 30
    assert parsed.explicit_params == ()


def test_value_keeps_equals_signs_and_commas():
    parsed = parse_prompt("a cat\nnegative_prompt=a=b, text, watermark")
    assert parsed.params.negative_prompt == "a=b, text, watermark"


def test_unknown_name_in_block_is_named_with_closest_known_name():
    found = problems_of("a cat\nstesp=30\nseed=1")
    assert list(found) == ["params.stesp"]
    assert "'stesp'" in found["params.stesp"]
    assert "did you mean 'steps'?" in found["params.stesp"]
    assert "line 2" in found["params.stesp"]


def test_unknown_name_without_similar_name():
    found = problems_of("a cat\nzzz=1")
    assert "'zzz'" in found["params.zzz"] and "not a parameter" in found["params.zzz"]


def test_prefix_of_a_name_is_suggested():
    assert "did you mean 'cfg_scale'?" in problems_of("a cat\ncfg=3")["params.cfg"]


def test_name_given_twice_in_block():
    found = problems_of("a cat\nsteps=20\nseed=1\nsteps=25")
    assert "lines 2 and 4" in found["params.steps"]


def test_request_params_override_block():
    parsed = parse_prompt("a cat\nsteps=20\nseed=7", {"steps": "40"})
    assert parsed.params.steps == 40
    assert parsed.params.seed == 7


def test_empty_request_value_leaves_block_value():
    parsed = parse_prompt("a cat\nsteps=20", {"steps": "", "seed": "  "})
    assert parsed.params.steps == 20
    assert parsed.params.seed is None
    assert parsed.explicit_params == ("steps",)


def test_block_only_document_has_no_text():
    found = problems_of("steps=30\nseed=1")
    assert "no text" in found["text"]


def test_a_parameter_line_above_the_text_is_text_with_a_warning():
    parsed = parse_prompt("a cat\nsteps=20\nseed=5\n\nsitting on a sofa")
    assert parsed.base_prompt == "a cat steps=20 seed=5 sitting on a sofa"
    assert parsed.params.steps == 30 and parsed.params.seed is None
    assert [w for w in parsed.warnings if "sent as prompt text" in w] == [
        "line 2 ('steps=20') is sent as prompt text, not read as a parameter: the parameter block is the run "
        "of name=value lines at the end of the prompt",
        "line 3 ('seed=5') is sent as prompt text, not read as a parameter: the parameter block is the run "
        "of name=value lines at the end of the prompt",
    ]


def test_text_with_equals_signs_gives_no_warning():
    parsed = parse_prompt("E=mc2 on a blackboard\nin chalk\nsteps=12")
    assert not [w for w in parsed.warnings if "sent as prompt text" in w]


@pytest.mark.parametrize(
    "text",
    [
        "a cat\nsteps=20\n--tiled_upscale",
        "a cat\n--tiled_upscale\nsteps=20",
        "a cat\nsteps=20\n--tiled_upscale\n\n",
    ],
)
def test_a_line_of_flags_beside_the_block_neither_ends_it_nor_joins_it(text):
    parsed = parse_prompt(text + "\nsuper_resolution=true")
    assert (parsed.base_prompt, parsed.params.steps, parsed.tiled_upscale) == ("a cat", 20, True)
    assert parsed.params.super_resolution is True


def test_flag_lines_without_a_block_stay_where_they_are():
    parsed = parse_prompt("a cat\n--mask_prompt sofa\nsitting", has_input_image=True)
    assert (parsed.base_prompt, parsed.mask.prompt) == ("a cat sitting", "sofa")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        (
            "hires_denoising_strength",
            "hires_denoising_strength is an inline flag, not a parameter; write "
            "--hires_denoising_strength in the prompt text",
        ),
        (
            "mask_prompt",
            "mask_prompt is an inline flag, not a parameter; write --mask_prompt in the prompt text",
        ),
        ("width", "did you mean 'w'?"),
        ("sampler", "did you mean 'scheduler'?"),
        ("guidance_scale", "did you mean 'cfg_scale'?"),
        ("num_inference_steps", "did you mean 'steps'?"),
    ],
)
def test_unknown_names_get_the_name_to_write_in_the_block_and_in_the_request(name, hint):
    in_block = problems_of(f"a cat\n{name}=1")[f"params.{name}"]
    assert in_block == f"unknown parameter {name!r} on line 2 of the parameter block; {hint}"
    in_request = problems_of("a cat", {name: "1"})[f"params.{name}"]
    assert in_request.endswith(hint)
