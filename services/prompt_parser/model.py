"""The parsed form of a prompt document: plain frozen dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from multipass_prompt_parser.tags import ModelTag

__all__ = ["MaskSpec", "ModelTag", "Params", "ParsedPrompt", "Person"]


@dataclass(frozen=True)
class Person:
    """One person segment (segment 2.. of the BREAK split)."""

    index: int
    prompt: str
    negative_prompt: str
    #: The person's own tags, then the common segment's tags.
    loras: tuple[ModelTag, ...]
    effective_prompt: str
    effective_negative_prompt: str


@dataclass(frozen=True)
class MaskSpec:
    """The prompt mask: mask = seg(prompt) - seg(negative), then dilate/erode, then invert."""

    prompt: str
    negative: str = ""
    invert: bool = False
    dilate_pixels: int | None = None
    dilate_percent: float | None = None


@dataclass(frozen=True)
class Params:
    """Every parameter with defaults applied and ``ar`` resolved into ``w`` and ``h``."""

    num_images: int
    negative_prompt: str
    seed: int | None
    steps: int
    cfg_scale: float
    scheduler: str
    w: int
    h: int
    ar: str
    controlnet: str
    controlnet_conditioning_scale: float | None
    controlnet_txt2img: bool
    input_image_url: str
    mask_image_url: str
    denoising_strength: float
    super_resolution: bool
    hires_fix: bool
    inpaint_faces: bool
    face_correct: bool
    face_swap: bool
    film_grain: bool
    prompt_expansion: bool
    use_lpw: bool
    color_grading: str


@dataclass(frozen=True)
class ParsedPrompt:
    base_prompt: str
    common_prompt: str
    base_effective_prompt: str
    #: The base segment's tags, then the common segment's tags.
    base_loras: tuple[ModelTag, ...]
    common_loras: tuple[ModelTag, ...]
    persons: tuple[Person, ...]
    negative_base: str
    negative_common: str
    base_effective_negative_prompt: str
    mask: MaskSpec | None
    hires_denoising_strength: float
    tiled_upscale: bool
    only_upscale: bool
    keep_background: bool
    multi_pass: bool
    params: Params
    #: Names of the parameters set in the block or the request, sorted.
    explicit_params: tuple[str, ...]
    warnings: tuple[str, ...]
