"""Rules that span several parts of a prompt: input-image needs, mask flags, keep-background mode,
and the warnings about settings that are implied or have no effect.

Decisions where Astria is silent or differs:

- ``controlnet`` needs an image to condition on. Without an input image it is an error, except
  ``controlnet=pose`` in a prompt with persons: the base pass is then conditioned on the default person
  layout (evenly spaced standing figures drawn as a pose skeleton), and a warning says so. A prompt with
  persons and no input image gets that conditioning without ``controlnet`` too (where the pose ControlNet
  is installed): ``controlnet_conditioning_scale`` scales it (0 turns it off) and an explicit
  ``controlnet=none`` turns it off.
- ``controlnet=composition`` (an image-prompt adapter, not a ControlNet) cannot share the base pass with
  a ``<faceid:...>`` tag of the base or common segment: both use the same attention layers.
- ``hires_fix`` and ``inpaint_faces`` are accepted without ``super_resolution`` (Astria applies them
  only together with it); the pass runs alone and a warning says what differs.
- ``--mask_negative``, ``--mask_invert`` and ``--mask_dilate`` change the mask made by
  ``--mask_prompt`` and are errors without it. ``--mask_prompt``, a mask image and ``--only_upscale``
  need an input image. ``--mask_prompt`` and a mask image together are an error (two masks).
- A prompt with nothing to generate (no text, no persons, not ``--only_upscale``) is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from multipass_prompt_parser.flags import FlagValues
from multipass_prompt_parser.language import COMPOSITION_CONTROLNET, POSE_CONTROLNET, quote
from multipass_prompt_parser.model import Person
from multipass_prompt_parser.params import ParamValues
from multipass_prompt_parser.problems import Problems
from multipass_prompt_parser.tags import ModelTag

#: ``(words:1.3)``: weighted syntax that only means something with use_lpw=true.
WEIGHTED = re.compile(r"\([^()]*:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*\)")

NEEDS_INPUT = "give input_image_url or upload an input image"


@dataclass(frozen=True)
class Context:
    base_text: str
    common_text: str
    base_tags: tuple[ModelTag, ...]
    common_tags: tuple[ModelTag, ...]
    persons: tuple[Person, ...]
    multi_pass: bool
    flags: FlagValues
    values: ParamValues
    has_input_image: bool
    has_mask_image: bool

    @cached_property
    def input_image(self) -> bool:
        """An input image is given (a refused URL counts: the user meant to give one)."""
        params = self.values.params
        return self.has_input_image or bool(params.input_image_url) or "input_image_url" in self.values.failed

    @cached_property
    def mask_image(self) -> bool:
        params = self.values.params
        return self.has_mask_image or bool(params.mask_image_url) or "mask_image_url" in self.values.failed

    @cached_property
    def keep_background(self) -> bool:
        """Base and common empty, an input image, persons to repaint, and generation at all."""
        return (
            not self.base_text
            and not self.common_text
            and self.input_image
            and bool(self.persons)
            and not self.flags.only_upscale
        )

    @property
    def all_tags(self) -> tuple[ModelTag, ...]:
        return self.base_tags + tuple(tag for person in self.persons for tag in person.loras)


def check(context: Context, problems: Problems) -> list[str]:
    """Report rule violations to ``problems``; return the warnings, in a stable order."""
    warnings: list[str] = []
    _check_generation(context, problems, warnings)
    _check_input_image_needs(context, problems, warnings)
    _check_mask_flags(context, problems, warnings)
    _warn_implied(context, warnings)
    _warn_prompt_text(context, warnings)
    return warnings


def _check_generation(context: Context, problems: Problems, warnings: list[str]) -> None:
    has_text = bool(context.base_text or context.common_text or context.persons)
    if context.flags.only_upscale:
        if has_text:
            warnings.append("--only_upscale: the prompt text is ignored; the input image is only upscaled")
        return
    if not has_text:
        problems.add(
            "text", "the prompt has no text to generate from; write the scene (and persons after BREAK)"
        )
        return
    if context.persons and not (context.base_text or context.common_text or context.input_image):
        warnings.append(
            "base and common prompts are empty and no input image is given: the base pass generates the "
            "scene from an empty prompt"
        )
    if context.multi_pass and not context.persons:
        warnings.append(
            "BREAK without person segments: one pass of the base and common prompts, no person passes"
        )
    _warn_keep_background(context, warnings)
    for person in context.persons:
        if not person.loras:
            warnings.append(f"person {person.index} has no <lora:...> tag: its pass uses the base model")
        if not person.prompt:
            warnings.append(f"person {person.index} has only tags, no text: its pass uses the common prompt")


def _warn_keep_background(context: Context, warnings: list[str]) -> None:
    """Keep-background mode skips the base pass: say which of the base pass's inputs are unused."""
    if not context.keep_background:
        return
    skipped = "keep-background mode skips the base pass, so"
    if context.base_tags:
        tags = " ".join(tag.tag for tag in context.base_tags)
        warnings.append(f"{skipped} the base segment's tags {tags} are unused")
    params = context.values.params
    # controlnet=pose is what the person passes do anyway where the pose ControlNet is installed.
    if params.controlnet and params.controlnet != POSE_CONTROLNET:
        settings = [f"controlnet={params.controlnet}"] + [
            name
            for name in ("controlnet_txt2img", "controlnet_conditioning_scale")
            if name in context.values.explicit
        ]
        warnings.append(
            f"{skipped} {', '.join(settings)} {'is' if len(settings) == 1 else 'are'} unused (the persons are "
            "repainted on the input image itself)"
        )
    if context.mask_image:
        warnings.append(f"{skipped} the mask image is unused: each person's mask comes from segmentation")


def _check_input_image_needs(context: Context, problems: Problems, warnings: list[str]) -> None:
    params = context.values.params
    if params.controlnet and not context.input_image:
        if params.controlnet == POSE_CONTROLNET and context.persons:
            warnings.append(
                f"controlnet=pose without an input image: the base pass is conditioned on the default layout "
                f"of {len(context.persons)} standing figure{'s' if len(context.persons) > 1 else ''}"
            )
        else:
            problems.add(
                "params.controlnet",
                f"controlnet={params.controlnet} needs an input image to condition on; {NEEDS_INPUT}, "
                "or remove controlnet",
            )
    _check_composition(context, problems)
    if context.flags.only_upscale and not context.input_image:
        problems.add("flag --only_upscale", f"--only_upscale needs an input image to upscale; {NEEDS_INPUT}")
    if context.mask_image and not context.input_image:
        problems.add("params.mask_image_url", f"a mask image needs an input image to apply to; {NEEDS_INPUT}")


def _check_composition(context: Context, problems: Problems) -> None:
    """controlnet=composition and a ``<faceid:...>`` tag of the base pass: both are image prompts on the
    same attention layers of that pass, so only one can condition it (a person's faceid tag is fine)."""
    params = context.values.params
    if params.controlnet != COMPOSITION_CONTROLNET or context.keep_background:
        return
    faceid = next((tag for tag in context.base_tags + context.common_tags if tag.kind == "faceid"), None)
    if faceid is not None:
        problems.add(
            "params.controlnet",
            f"controlnet=composition and {faceid.tag} both condition the base pass through its image-prompt "
            "attention; use one of them there (a <faceid:...> tag in a person's segment is fine)",
        )


def _check_mask_flags(context: Context, problems: Problems, warnings: list[str]) -> None:
    flags = context.flags
    if flags.mask_prompt:
        if not context.input_image:
            problems.add(
                "flag --mask_prompt",
                f"--mask_prompt {quote(flags.mask_prompt)} needs an input image to segment; {NEEDS_INPUT}",
            )
        if context.mask_image:
            problems.add(
                "flag --mask_prompt",
                "--mask_prompt and a mask image both give the mask; keep one of them",
            )
        if context.keep_background:
            warnings.append("keep-background mode skips the base pass, so the --mask_prompt mask is unused")
        return
    modifiers = [
        ("mask_negative", bool(flags.mask_negative)),
        ("mask_invert", flags.mask_invert),
        ("mask_dilate", flags.dilate_pixels is not None or flags.dilate_percent is not None),
    ]
    for name, given in modifiers:
        if given:
            problems.add(
                f"flag --{name}",
                f"--{name} changes the mask made by --mask_prompt, but --mask_prompt is not given",
            )


#: Parameters that shape a generated image: with --only_upscale nothing is generated, so they do nothing.
GENERATION_ONLY = (
    "hires_fix", "inpaint_faces", "face_correct", "face_swap", "controlnet", "controlnet_conditioning_scale",
    "controlnet_txt2img", "prompt_expansion", "use_lpw", "denoising_strength", "cfg_scale", "steps",
    "scheduler", "seed", "negative_prompt",
)  # fmt: skip


def _warn_only_upscale(context: Context, warnings: list[str]) -> None:
    """With --only_upscale the chain is the upscale (and the finish): say which options do nothing."""
    params, explicit, flags = context.values.params, context.values.explicit, context.flags
    ignored = [name for name in GENERATION_ONLY if name in explicit and getattr(params, name, None)]
    ignored += [f"--{name}" for name, given in (
        ("mask_prompt", bool(flags.mask_prompt)),
        ("hires_denoising_strength", flags.hires_denoising_strength is not None),
    ) if given]  # fmt: skip
    if context.mask_image:
        ignored.append("the mask image")
    if ignored:
        warnings.append(
            f"--only_upscale: {', '.join(ignored)} ha{'ve' if len(ignored) > 1 else 's'} no effect; the input "
            "image is only upscaled (film_grain and color_grading still apply)"
        )
    if params.num_images > 1:
        warnings.append(
            f"--only_upscale: num_images={params.num_images} upscales the same input {params.num_images} times, "
            "to the same result"
        )


def _warn_implied(context: Context, warnings: list[str]) -> None:
    params = context.values.params
    explicit = context.values.explicit
    if context.flags.only_upscale:
        _warn_only_upscale(context, warnings)
        return
    for name in ("hires_fix", "inpaint_faces"):
        if getattr(params, name) and not params.super_resolution:
            warnings.append(
                f"{name}=true without super_resolution=true: Astria applies {name} only together with "
                f"super_resolution; here the {name} pass runs alone, without the x4 upscale"
            )
    if context.flags.hires_denoising_strength is not None and not params.hires_fix:
        warnings.append("--hires_denoising_strength has no effect without hires_fix=true")
    elif context.flags.hires_denoising_strength == 0:
        warnings.append("--hires_denoising_strength 0: the hires pass only upscales (no denoising step)")
    unused_strength = _unused_denoising_strength(context)
    if "denoising_strength" in explicit and unused_strength:
        warnings.append(f"denoising_strength has no effect: {unused_strength}")
    elif "denoising_strength" in explicit and params.denoising_strength == 0:
        warnings.append(
            "denoising_strength=0: nothing is denoised: an input image is kept as it is and person passes "
            "repaint nothing (leave it out for each pass's default)"
        )
    if context.flags.tiled_upscale and not (params.super_resolution or context.flags.only_upscale):
        warnings.append("--tiled_upscale has no effect without super_resolution=true or --only_upscale")
    if (
        params.controlnet
        and "controlnet_conditioning_scale" in explicit
        and params.controlnet_conditioning_scale == 0
    ):
        warnings.append(
            f"controlnet_conditioning_scale=0: controlnet={params.controlnet} has no effect; no ControlNet runs"
        )
    if not params.controlnet:
        if "controlnet_conditioning_scale" in explicit and not _layout_pose(context):
            warnings.append("controlnet_conditioning_scale is ignored without controlnet")
        elif "controlnet_conditioning_scale" in explicit and params.controlnet_conditioning_scale == 0:
            warnings.append(
                "controlnet_conditioning_scale=0: the base pass is not conditioned on the pose of the "
                "default person layout"
            )
        if params.controlnet_txt2img:
            warnings.append("controlnet_txt2img is ignored without controlnet")
    if params.face_swap and not context.all_tags:
        warnings.append(
            "face_swap=true needs a tune (<lora:...> or <faceid:...> tag) to take the face from; nothing to swap"
        )


def _layout_pose(context: Context) -> bool:
    """Whether the base pass may be conditioned on the pose of the default person layout (persons, no input
    image, no explicit controlnet=none), which controlnet_conditioning_scale scales where the pose
    ControlNet is installed."""
    declined = "controlnet" in context.values.explicit and not context.values.params.controlnet
    return bool(context.persons) and not context.input_image and not declined


def _unused_denoising_strength(context: Context) -> str:
    """Why no pass of the job starts from an image (so denoising_strength changes nothing), or ""."""
    if context.persons:
        return ""
    if not context.input_image:
        return "nothing starts from an image (no input image, no persons): the base pass generates from noise"
    params = context.values.params
    txt2img = params.controlnet and params.controlnet_txt2img
    scale_off = (
        "controlnet_conditioning_scale" in context.values.explicit
        and not params.controlnet_conditioning_scale
    )
    if txt2img and not scale_off and not context.flags.mask_prompt and not context.mask_image:
        return (
            f"controlnet_txt2img=true generates the base pass from noise conditioned on the input image "
            f"(controlnet={params.controlnet}), and there are no persons"
        )
    return ""


def _warn_prompt_text(context: Context, warnings: list[str]) -> None:
    if context.values.params.use_lpw:
        return
    texts = [context.base_text, context.common_text, *(p.prompt for p in context.persons)]
    texts.append(context.values.params.negative_prompt)
    for text in texts:
        found = WEIGHTED.search(text)
        if found is not None:
            warnings.append(
                f"weighted syntax such as {quote(found.group(0))} needs use_lpw=true; without it the "
                "brackets and weights reach the encoder as plain text"
            )
            return
