"""Conversion between the parser's dataclasses and the ``multipass.v1`` prompt messages.

The only module of the prompt parser that touches ``prompt_pb2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from multipass.v1 import prompt_pb2
from multipass_prompt_parser.model import MaskSpec, ModelTag, Params, ParsedPrompt, Person


@dataclass(frozen=True)
class ParseInput:
    """What a ParseRequest asks for, as plain values."""

    text: str
    params: dict[str, str]
    has_input_image: bool = False
    has_mask_image: bool = False
    #: The base model's native size; 0 for the parser's configured one.
    native_size: int = 0


def from_request(request: prompt_pb2.ParseRequest) -> ParseInput:
    return ParseInput(
        text=request.text,
        params=dict(request.params),
        has_input_image=request.has_input_image,
        has_mask_image=request.has_mask_image,
        native_size=request.native_size,
    )


def to_request(
    text: str,
    params: Mapping[str, str] | None = None,
    *,
    has_input_image: bool = False,
    has_mask_image: bool = False,
    native_size: int = 0,
) -> prompt_pb2.ParseRequest:
    return prompt_pb2.ParseRequest(
        text=text,
        params=dict(params or {}),
        has_input_image=has_input_image,
        has_mask_image=has_mask_image,
        native_size=native_size,
    )


def to_response(parsed: ParsedPrompt) -> prompt_pb2.ParseResponse:
    return prompt_pb2.ParseResponse(parsed=to_proto(parsed))


# ----------------------------------------------------------------------------------------------
# dataclasses -> messages


def _tag_to_proto(tag: ModelTag) -> prompt_pb2.LoraRef:
    return prompt_pb2.LoraRef(tune_id=tag.tune_id, weight=tag.weight, kind=tag.kind, tag=tag.tag)


def _person_to_proto(person: Person) -> prompt_pb2.PersonPrompt:
    return prompt_pb2.PersonPrompt(
        index=person.index,
        prompt=person.prompt,
        negative_prompt=person.negative_prompt,
        loras=[_tag_to_proto(tag) for tag in person.loras],
        effective_prompt=person.effective_prompt,
        effective_negative_prompt=person.effective_negative_prompt,
    )


def _mask_to_proto(mask: MaskSpec) -> prompt_pb2.MaskSpec:
    message = prompt_pb2.MaskSpec(prompt=mask.prompt, negative=mask.negative, invert=mask.invert)
    if mask.dilate_pixels is not None:
        message.dilate_pixels = mask.dilate_pixels
    elif mask.dilate_percent is not None:
        message.dilate_percent = mask.dilate_percent
    return message


def _params_to_proto(params: Params) -> prompt_pb2.Params:
    values = {f.name: getattr(params, f.name) for f in fields(params)}
    optional = {name: values.pop(name) for name in ("seed", "controlnet_conditioning_scale")}
    message = prompt_pb2.Params(**values)
    for name, value in optional.items():
        if value is not None:
            setattr(message, name, value)
    return message


def to_proto(parsed: ParsedPrompt) -> prompt_pb2.ParsedPrompt:
    message = prompt_pb2.ParsedPrompt(
        base_prompt=parsed.base_prompt,
        common_prompt=parsed.common_prompt,
        base_effective_prompt=parsed.base_effective_prompt,
        base_loras=[_tag_to_proto(tag) for tag in parsed.base_loras],
        common_loras=[_tag_to_proto(tag) for tag in parsed.common_loras],
        persons=[_person_to_proto(person) for person in parsed.persons],
        negative_base=parsed.negative_base,
        negative_common=parsed.negative_common,
        base_effective_negative_prompt=parsed.base_effective_negative_prompt,
        hires_denoising_strength=parsed.hires_denoising_strength,
        flags=prompt_pb2.Flags(tiled_upscale=parsed.tiled_upscale, only_upscale=parsed.only_upscale),
        keep_background=parsed.keep_background,
        multi_pass=parsed.multi_pass,
        params=_params_to_proto(parsed.params),
        explicit_params=list(parsed.explicit_params),
        warnings=list(parsed.warnings),
    )
    if parsed.mask is not None:
        message.mask.CopyFrom(_mask_to_proto(parsed.mask))
    return message


# ----------------------------------------------------------------------------------------------
# messages -> dataclasses


def _float(value: float) -> float:
    """A float32 field's value as the decimal it was written from (0.7, not 0.699999988)."""
    return float(f"{value:.7g}")


def _tag_from_proto(message: prompt_pb2.LoraRef) -> ModelTag:
    return ModelTag(
        kind=message.kind, tune_id=message.tune_id, weight=_float(message.weight), tag=message.tag
    )


def _person_from_proto(message: prompt_pb2.PersonPrompt) -> Person:
    return Person(
        index=message.index,
        prompt=message.prompt,
        negative_prompt=message.negative_prompt,
        loras=tuple(_tag_from_proto(tag) for tag in message.loras),
        effective_prompt=message.effective_prompt,
        effective_negative_prompt=message.effective_negative_prompt,
    )


def _mask_from_proto(message: prompt_pb2.MaskSpec) -> MaskSpec:
    which = message.WhichOneof("dilate")
    return MaskSpec(
        prompt=message.prompt,
        negative=message.negative,
        invert=message.invert,
        dilate_pixels=message.dilate_pixels if which == "dilate_pixels" else None,
        dilate_percent=_float(message.dilate_percent) if which == "dilate_percent" else None,
    )


def _params_from_proto(message: prompt_pb2.Params) -> Params:
    values: dict[str, object] = {}
    for f in fields(Params):
        value = getattr(message, f.name)
        values[f.name] = _float(value) if isinstance(value, float) else value
    values["seed"] = message.seed if message.HasField("seed") else None
    if not message.HasField("controlnet_conditioning_scale"):
        values["controlnet_conditioning_scale"] = None
    return Params(**values)


def from_proto(message: prompt_pb2.ParsedPrompt) -> ParsedPrompt:
    return ParsedPrompt(
        base_prompt=message.base_prompt,
        common_prompt=message.common_prompt,
        base_effective_prompt=message.base_effective_prompt,
        base_loras=tuple(_tag_from_proto(tag) for tag in message.base_loras),
        common_loras=tuple(_tag_from_proto(tag) for tag in message.common_loras),
        persons=tuple(_person_from_proto(person) for person in message.persons),
        negative_base=message.negative_base,
        negative_common=message.negative_common,
        base_effective_negative_prompt=message.base_effective_negative_prompt,
        mask=_mask_from_proto(message.mask) if message.HasField("mask") else None,
        hires_denoising_strength=_float(message.hires_denoising_strength),
        tiled_upscale=message.flags.tiled_upscale,
        only_upscale=message.flags.only_upscale,
        keep_background=message.keep_background,
        multi_pass=message.multi_pass,
        params=_params_from_proto(message.params),
        explicit_params=tuple(message.explicit_params),
        warnings=tuple(message.warnings),
    )
