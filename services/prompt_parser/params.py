"""Parameters (§5): the block's values overridden by the request's, read, defaulted and sized.

Every problem is collected under ``params.<name>`` with the value received and what is allowed.
A parameter whose value is bad falls back to its default so that the remaining checks can still run;
its name is listed in :attr:`ParamValues.failed` so that they do not report consequences of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from multipass_prompt_parser.language import (
    FLAG_NAMES,
    MIN_SIZE,
    PARAMS,
    POSE_CONTROLNET,
    SIZE_STEP,
    Limits,
    allowed,
    other_side,
    quote,
    read_param,
    shorten,
    size_for_ar,
    unknown_name_hint,
)
from multipass_prompt_parser.model import Params
from multipass_prompt_parser.problems import Problems


@dataclass(frozen=True)
class ParamValues:
    params: Params
    #: Names set in the block or the request.
    explicit: frozenset[str]
    #: Names given with a value that was refused.
    failed: frozenset[str]
    warnings: tuple[str, ...]


def _check_request_names(request: Mapping[str, str], problems: Problems) -> dict[str, str]:
    given: dict[str, str] = {}
    for name, value in sorted(request.items()):
        if name not in PARAMS:
            hint = unknown_name_hint(name)
            if name.lstrip("-") in FLAG_NAMES:
                problems.add(f"params.{shorten(name)}", hint)
            else:
                problems.add(
                    f"params.{shorten(name)}", f"unknown parameter {quote(name)} in the request; {hint}"
                )
            continue
        if value.strip():
            given[name] = value.strip()
    return given


def resolve_params(
    block: Mapping[str, str], request: Mapping[str, str], problems: Problems, limits: Limits
) -> ParamValues:
    """The parameters of one prompt: request values override block values; empty means "not given"."""
    from_request = _check_request_names(request, problems)
    merged = {**block, **from_request}
    values: dict[str, object] = {}
    failed: set[str] = set()
    for name, raw in merged.items():
        param = PARAMS[name]
        try:
            values[name] = read_param(param, raw, limits)
        except ValueError:
            source = "request" if name in from_request else "parameter block"
            problems.add(
                f"params.{name}", f"got {quote(raw)} in the {source}; allowed: {allowed(param, limits)}"
            )
            failed.add(name)

    warnings: list[str] = []
    controlnet = merged.get("controlnet", "").strip().lower()
    if values.get("controlnet") == POSE_CONTROLNET and controlnet.startswith("pose_"):
        warnings.append(f"controlnet={controlnet}: the body pose is drawn; hand and face keypoints are not")
    resolved = {name: values.get(name, param.default) for name, param in PARAMS.items()}
    if not failed & {"w", "h", "ar"}:
        _resolve_size(resolved, values, problems, limits, warnings)
    else:
        resolved["w"] = resolved["h"] = limits.native_size
    if resolved["controlnet_conditioning_scale"] is None and resolved["controlnet"] == POSE_CONTROLNET:
        resolved["controlnet_conditioning_scale"] = 1.0
    return ParamValues(
        params=Params(**resolved),
        explicit=frozenset(merged),
        failed=frozenset(failed),
        warnings=tuple(warnings),
    )


def ratio_of(width: int, height: int) -> str:
    """``640x384`` -> ``5:3``: the size's aspect ratio in lowest terms."""
    divisor = math.gcd(width, height) or 1
    return f"{width // divisor}:{height // divisor}"


def _resolve_size(
    resolved: dict[str, object],
    given: dict[str, object],
    problems: Problems,
    limits: Limits,
    warnings: list[str],
) -> None:
    ar = resolved["ar"]
    width, height = given.get("w"), given.get("h")
    if width is None and height is None:
        resolved["w"], resolved["h"] = size_for_ar(ar, limits)
        return
    if width is not None and height is not None:
        if "ar" in given:
            warnings.append(f"ar={ar} is ignored because w and h are both given ({width}x{height})")
        resolved["ar"] = ratio_of(int(width), int(height))  # what the image is, not the default 1:1
        return
    missing, known, known_value = ("h", "w", width) if height is None else ("w", "h", height)
    derived = other_side(known_value, ar, given_is_width=known == "w")
    if not MIN_SIZE <= derived <= limits.max_size:
        problems.add(
            f"params.{missing}",
            f"resolved to {derived} from {known}={known_value} and ar={ar}; allowed: a multiple of "
            f"{SIZE_STEP} in {MIN_SIZE}..{limits.max_size}; give {missing} explicitly or change ar",
        )
        derived = limits.native_size
    resolved[missing] = derived
