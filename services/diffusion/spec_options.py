"""Reading pass settings from ``PassSpec.options`` (strings) with named, ranged errors."""

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
