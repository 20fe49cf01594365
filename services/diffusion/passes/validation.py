"""Checks and defaults shared by the diffusion pass kinds."""

from __future__ import annotations

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.schedulers import check_scheduler

MAX_STEPS = 150
MAX_SIDE = 4096
DEFAULT_MASK_BLUR = 4.0


def check_common(spec: diffusion_pb2.PassSpec) -> None:
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


def mask_blur(spec: diffusion_pb2.PassSpec) -> float:
    """Feather sigma: 0 = default, negative = none."""
    if spec.mask_blur < 0:
        return 0.0
    return spec.mask_blur or DEFAULT_MASK_BLUR
