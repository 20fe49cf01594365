"""Domain dataclasses <-> multipass.v1 prompt messages."""

from pathlib import Path

import pytest

from multipass.v1 import prompt_pb2
from multipass_prompt_parser.convert import from_proto, from_request, to_proto, to_request, to_response
from multipass_prompt_parser.parser import parse_prompt

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
IMAGE = {"input_image_url": "https://example.com/in.png"}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.prompt")))
def test_examples_round_trip(name):
    parsed = parse_prompt((EXAMPLES / name).read_text())
    message = to_proto(parsed)
    assert from_proto(prompt_pb2.ParsedPrompt.FromString(message.SerializeToString())) == parsed


def test_fields_of_the_multi_person_example():
    message = to_proto(parse_prompt((EXAMPLES / "multi-person.prompt").read_text()))
    assert message.multi_pass and not message.keep_background
    assert [[(lora.tune_id, lora.kind, lora.tag) for lora in p.loras] for p in message.persons] == [
        [("849330", "lora", "<lora:849330:1>")],
        [("861629", "lora", "<lora:861629:1>")],
    ]
    assert [p.index for p in message.persons] == [0, 1]
    assert message.params.num_images == 2
    assert (message.params.w, message.params.h) == (768, 512)
    assert not message.HasField("mask")
    assert not message.params.HasField("seed")
    assert not message.params.HasField("controlnet_conditioning_scale")


def test_optional_fields_are_present_when_set():
    parsed = parse_prompt(
        "a park --mask_prompt bench --mask_dilate -12.5%", {**IMAGE, "seed": "0", "controlnet": "pose"}
    )
    message = to_proto(parsed)
    assert message.params.HasField("seed") and message.params.seed == 0
    assert message.params.controlnet_conditioning_scale == 1.0
    assert message.mask.WhichOneof("dilate") == "dilate_percent"
    assert message.mask.dilate_percent == -12.5
    assert from_proto(message) == parsed


def test_pixel_dilate_and_flags():
    parsed = parse_prompt(
        "a park --mask_prompt bench --mask_dilate 7 --mask_invert --tiled_upscale",
        {**IMAGE, "super_resolution": "1"},
    )
    message = to_proto(parsed)
    assert message.mask.WhichOneof("dilate") == "dilate_pixels" and message.mask.dilate_pixels == 7
    assert message.mask.invert and message.flags.tiled_upscale and not message.flags.only_upscale
    assert from_proto(message) == parsed


def test_seed_at_the_top_of_its_range_and_tag_weights():
    parsed = parse_prompt("a park <lora:5:0.7> BREAK x <faceid:abc:-1.25>", {"seed": "4294967295"})
    message = to_proto(parsed)
    assert message.params.seed == 4294967295
    assert [(lora.kind, lora.tune_id) for lora in message.base_loras] == [("lora", "5"), ("faceid", "abc")]
    assert [lora.tune_id for lora in message.common_loras] == ["abc"]
    assert from_proto(message) == parsed


def test_warnings_and_explicit_params_travel():
    parsed = parse_prompt("a park", {"hires_fix": "true", "steps": "20"})
    message = to_response(parsed).parsed
    assert list(message.explicit_params) == ["hires_fix", "steps"]
    assert list(message.warnings) == list(parsed.warnings) and parsed.warnings


def test_request_conversion():
    request = to_request("a park", {"steps": "20"}, has_input_image=True)
    asked = from_request(prompt_pb2.ParseRequest.FromString(request.SerializeToString()))
    assert (asked.text, asked.params, asked.has_input_image, asked.has_mask_image) == (
        "a park",
        {"steps": "20"},
        True,
        False,
    )
