"""Checks of a pass's spec and inputs shared by the pass kinds, raising InvalidInput that names the field."""

from __future__ import annotations

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.schedulers import check_scheduler

MAX_STEPS = 150
MAX_SIDE = 4096
DEFAULT_MASK_BLUR = 4.0


def check_common(spec: diffusion_pb2.PassSpec) -> None:
    """The sampling fields every diffusion pass reads: steps, cfg scale, size, ControlNet scale, scheduler."""
    problems = []
    if not 1 <= spec.steps <= MAX_STEPS:
        problems.append(Violation("spec.steps", f"got {spec.steps}; expected 1..{MAX_STEPS}"))
    if spec.cfg_scale < 0 or spec.cfg_scale > 30:
        problems.append(Violation("spec.cfg_scale", f"got {spec.cfg_scale}; expected 0..30"))
    for name in ("width", "height"):
        value = getattr(spec, name)
        if value and (value % 8 or not 8 <= value <= MAX_SIDE):
            problems.append(
                Violation(f"spec.{name}", f"got {value}; expected a multiple of 8 in 8..{MAX_SIDE}")
            )
    if bool(spec.width) != bool(spec.height):
        problems.append(Violation("spec.width", "width and height are given together or not at all"))
    if not 0 <= spec.controlnet_conditioning_scale <= 2:
        problems.append(
            Violation(
                "spec.controlnet_conditioning_scale",
                f"got {spec.controlnet_conditioning_scale}; expected 0..2",
            )
        )
    if problems:
        raise InvalidInput.of(problems)
    check_scheduler(spec.scheduler)


def check_strength(value: float, field: str = "spec.denoising_strength") -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidInput.of([Violation(field, f"got {value:g}; expected 0..1")])


def check_scale(spec: diffusion_pb2.PassSpec, *, low: float, high: float) -> None:
    if spec.scale and not low <= spec.scale <= high:
        raise InvalidInput.of([Violation("spec.scale", f"got {spec.scale:g}; expected {low:g}..{high:g}")])


def needs_image(inputs: PassInputs, kind: str) -> None:
    if inputs.image is None:
        raise InvalidInput.of([Violation("spec.image", f"the {kind} pass needs the current image")])


def mask_blur(spec: diffusion_pb2.PassSpec) -> float:
    """Feather sigma: 0 = default, negative = none."""
    if spec.mask_blur < 0:
        return 0.0
    return spec.mask_blur or DEFAULT_MASK_BLUR
