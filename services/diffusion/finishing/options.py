"""Reading the finishing passes' settings from ``PassSpec.options`` (strings) with named, ranged errors."""

from __future__ import annotations

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2


def _field(name: str) -> str:
    return f"spec.options[{name}]"


def option_float(
    spec: diffusion_pb2.PassSpec, name: str, default: float, *, low: float, high: float
) -> float:
    """``options[name]`` as a float in ``low..high``; ``default`` when absent or empty."""
    raw = spec.options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput.of([Violation(_field(name), f"got {raw!r}; expected a number")]) from None
    if not low <= value <= high:
        raise InvalidInput.of([Violation(_field(name), f"got {raw}; expected {low:g}..{high:g}")])
    return value


def option_int(spec: diffusion_pb2.PassSpec, name: str, default: int, *, low: int, high: int) -> int:
    raw = spec.options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput.of([Violation(_field(name), f"got {raw!r}; expected an integer")]) from None
    if not low <= value <= high:
        raise InvalidInput.of([Violation(_field(name), f"got {raw}; expected {low}..{high}")])
    return value


def check_scale(spec: diffusion_pb2.PassSpec, *, low: float, high: float) -> None:
    if spec.scale and not low <= spec.scale <= high:
        raise InvalidInput.of([Violation("spec.scale", f"got {spec.scale:g}; expected {low:g}..{high:g}")])


def check_strength(value: float, field: str = "spec.denoising_strength") -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidInput.of([Violation(field, f"got {value:g}; expected 0..1")])


def needs_image(inputs, kind: str) -> None:
    if inputs.image is None:
        raise InvalidInput.of([Violation("spec.image", f"the {kind} pass needs the current image")])
