"""What the gateway asks of the segmentation service for a prompt mask (``--mask_*`` flags)."""

from __future__ import annotations

import pytest

from multipass.v1 import prompt_pb2, segmentation_pb2
from multipass_gateway.app.segmentation_steps import text_mask_request
from multipass_prompt_parser.convert import to_proto
from multipass_prompt_parser.parser import parse_prompt

IMAGE = {"input_image_url": "https://example.com/kitchen.png"}


def request_for(flags: str) -> segmentation_pb2.TextMaskRequest:
    parsed = to_proto(parse_prompt(f"a sunny kitchen {flags}", IMAGE))
    return text_mask_request(parsed.mask)


def test_every_mask_flag_reaches_the_segmentation_request():
    asked = request_for("--mask_prompt windows door --mask_negative curtains --mask_invert --mask_dilate -12")
    assert (asked.prompt, asked.negative, asked.invert) == ("windows door", "curtains", True)
    assert asked.WhichOneof("dilate") == "dilate_pixels" and asked.dilate_pixels == -12


@pytest.mark.parametrize(("flag", "percent"), [("--mask_dilate 20%", 20.0), ("--mask_dilate -7.5%", -7.5)])
def test_a_dilation_in_percent_stays_in_percent(flag, percent):
    asked = request_for(f"--mask_prompt person {flag}")
    assert asked.WhichOneof("dilate") == "dilate_percent" and asked.dilate_percent == pytest.approx(percent)
    assert not asked.invert and not asked.negative


def test_no_dilation_is_none_rather_than_zero():
    asked = text_mask_request(prompt_pb2.MaskSpec(prompt="face"))
    assert asked.WhichOneof("dilate") is None and asked.prompt == "face"
