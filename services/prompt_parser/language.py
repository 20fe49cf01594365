"""The tables of the prompt language: parameters, inline flags, model tags, aspect ratios, limits.

Everything here is data plus the value readers that go with it; the parsing steps live in
``document``, ``flags``, ``breaks`` and ``tags``, and ``parser`` puts them together.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from urllib.parse import urlsplit

from multipass.errors import InvalidInput, Violation


@dataclass(frozen=True)
class Limits:
    """Operator-configurable bounds of the language (from the service's settings)."""

    #: Native (short-side) size of the model in pixels; the default width and height.
    native_size: int = 512
    #: Upper bound of w and h in pixels (a multiple of 8).
    max_size: int = 2048
    #: Most person segments a prompt may have.
    max_persons: int = 8
    #: Most characters in a prompt document, and in any one request parameter value.
    max_prompt_chars: int = 4000


MIN_SIZE = 256
SIZE_STEP = 8


def with_native_size(limits: Limits, native_size: int) -> Limits:
    """``limits`` for a model whose native size is ``native_size`` pixels (0: unchanged), brought into
    256..the size cap and onto a multiple of 8 (a tiny test model's 64 becomes 256; SDXL's 1024 under a
    768 cap becomes 768). InvalidInput naming ``native_size`` when it is negative."""
    if native_size < 0:
        raise InvalidInput.of(
            [Violation("native_size", f"got {native_size}; allowed: 0 or a number of pixels")]
        )
    if native_size == 0:
        return limits
    fitted = min(limits.max_size, max(MIN_SIZE, native_size // SIZE_STEP * SIZE_STEP))
    return limits if fitted == limits.native_size else replace(limits, native_size=fitted)


SEED_MAX = 2**32 - 1
#: Weights a model tag may carry.
TAG_WEIGHT_MIN, TAG_WEIGHT_MAX = -5.0, 5.0
#: Longest tune id or LoRA name inside a tag.
TAG_ID_MAX_CHARS = 128
#: Longest input_image_url / mask_image_url.
URL_MAX_CHARS = 2048
#: How many characters of a received value an error message quotes.
QUOTE_CHARS = 40


class Kind(Enum):
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    CHOICE = "choice"
    BOOL = "bool"
    URL = "url"
    SIZE = "size"


@dataclass(frozen=True)
class Param:
    """One parameter of §5: its type, allowed values and default."""

    name: str
    kind: Kind
    default: object = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


SCHEDULERS = ("euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "lcm", "tcd")
ASPECT_RATIOS: dict[str, float] = {
    "1:1": 1.0,
    "portrait": 2 / 3,
    "16:9": 16 / 9,
    "landscape": 3 / 2,
    "anamorphic": 2.39,
    # Astria's other ratios, as its clients send them.
    "9:16": 9 / 16,
    "4:3": 4 / 3,
    "3:4": 3 / 4,
    "5:4": 5 / 4,
    "4:5": 4 / 5,
    "21:9": 21 / 9,
    "9:21": 9 / 21,
}
#: Other spellings accepted for ``ar``, mapped to the names above.
ASPECT_RATIO_ALIASES = {"2:3": "portrait", "3:2": "landscape", "2.39:1": "anamorphic"}
CONTROLNETS = ("pose", "canny", "depth", "lineart", "mlsd", "hed", "tile", "qr", "reference", "composition")
#: Other spellings of a controlnet value: ``none`` turns off one set elsewhere (a request over the parameter
#: block); Astria's pose variants are drawn as the body pose (no hand or face keypoints: a warning says so).
CONTROLNET_ALIASES = {
    "none": "",
    "off": "",
    "pose_with_hand": "pose",
    "pose_with_face": "pose",
    "pose_face_and_hand": "pose",
}
COLOR_GRADINGS = ("Film Velvia", "Film Portra", "Ektar")
BOOL_PARAMS = (
    "super_resolution",
    "hires_fix",
    "inpaint_faces",
    "face_correct",
    "face_swap",
    "film_grain",
    "prompt_expansion",
    "use_lpw",
)
#: The ControlNet kind whose conditioning scale defaults to 1 (others leave it to the model).
POSE_CONTROLNET = "pose"
COMPOSITION_CONTROLNET = "composition"

PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("num_images", Kind.INT, 1, 1, 8),
        Param("negative_prompt", Kind.TEXT, ""),
        Param("seed", Kind.INT, None, 0, SEED_MAX),
        Param("steps", Kind.INT, 30, 1, 50),
        Param("cfg_scale", Kind.FLOAT, 7.0, 0, 15),
        Param("scheduler", Kind.CHOICE, "dpm++2m_karras", choices=SCHEDULERS),
        Param("w", Kind.SIZE),
        Param("h", Kind.SIZE),
        Param("ar", Kind.CHOICE, "1:1", choices=tuple(ASPECT_RATIOS)),
        Param("controlnet", Kind.CHOICE, "", choices=CONTROLNETS),
        Param("controlnet_conditioning_scale", Kind.FLOAT, None, 0, 2),
        Param("controlnet_txt2img", Kind.BOOL, False),
        Param("input_image_url", Kind.URL, ""),
        Param("mask_image_url", Kind.URL, ""),
        Param("denoising_strength", Kind.FLOAT, 0.8, 0, 1),
        *(Param(name, Kind.BOOL, False) for name in BOOL_PARAMS),
        Param("color_grading", Kind.CHOICE, "", choices=COLOR_GRADINGS),
    )
}


class Flag(Enum):
    """The inline flags of §4, by the kind of value they take."""

    MASK_PROMPT = "mask_prompt"
    MASK_NEGATIVE = "mask_negative"
    MASK_INVERT = "mask_invert"
    MASK_DILATE = "mask_dilate"
    HIRES_DENOISING_STRENGTH = "hires_denoising_strength"
    TILED_UPSCALE = "tiled_upscale"
    ONLY_UPSCALE = "only_upscale"


#: Flags written without a value.
VALUELESS_FLAGS = frozenset({Flag.MASK_INVERT, Flag.TILED_UPSCALE, Flag.ONLY_UPSCALE})
FLAG_NAMES = tuple(flag.value for flag in Flag)
HIRES_DENOISING_DEFAULT = 0.4
#: Largest --mask_dilate in percent of the image's shorter side.
DILATE_PERCENT_MAX = 100.0

TAG_KINDS = ("lora", "faceid")


# ----------------------------------------------------------------------------------------------
# Value readers: each returns the value or raises ValueError with "allowed: ..." wording.

_INT = re.compile(r"[+-]?[0-9]+")
#: A host name (letters, digits, '-', '.', '_', internationalised ones too) or an IPv6 address as urlsplit
#: gives it (without brackets).
_URL_HOST = re.compile(r"[\w.-]+|[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._~-]+)?")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def read_int(text: str) -> int:
    if not _INT.fullmatch(text) or len(text) > 30:
        raise ValueError("not an integer")
    return int(text)


def read_float(text: str) -> float:
    if not _FLOAT.fullmatch(text) or len(text) > 40:
        raise ValueError("not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def read_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError("not true/false/1/0")


def read_choice(text: str, choices: Iterable[str], aliases: dict[str, str] | None = None) -> str:
    """The canonical spelling of ``text`` among ``choices`` (case-insensitive)."""
    by_lower = {choice.lower(): choice for choice in choices}
    for alias, target in (aliases or {}).items():
        by_lower[alias.lower()] = target
    found = by_lower.get(text.lower())
    if found is None:
        raise ValueError("not one of the allowed values")
    return found


def read_url(text: str) -> str:
    """An http(s) URL with a host name or address, a port in range if any, and no user:password."""
    if len(text) > URL_MAX_CHARS or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError("not a URL")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port  # ValueError for a port that is not a number in 0..65535
    except ValueError as error:
        raise ValueError("not a URL") from error
    if port == 0:
        raise ValueError("port 0")
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError("not an http(s) URL")
    if parts.username is not None or parts.password is not None or "\\" in parts.netloc:
        raise ValueError("credentials in a URL")
    if not _URL_HOST.fullmatch(host):
        raise ValueError("not a host name or address")
    return text


def allowed(param: Param, limits: Limits) -> str:
    """What ``param`` accepts, in words (the second half of every error about it)."""
    if param.kind is Kind.INT:
        unset = " (leave it empty for a random seed)" if param.name == "seed" else ""
        return f"an integer in {int(param.low)}..{int(param.high)}{unset}"
    if param.kind is Kind.FLOAT:
        return f"a number in {param.low:g}..{param.high:g}"
    if param.kind is Kind.SIZE:
        return f"a multiple of {SIZE_STEP} in {MIN_SIZE}..{limits.max_size}"
    if param.kind is Kind.BOOL:
        return "true, false, 1 or 0"
    if param.kind is Kind.URL:
        return "an http:// or https:// URL with a host name or address, no user:password and a port in 1..65535 if any"
    if param.kind is Kind.CHOICE:
        return "one of " + ", ".join(param.choices)
    return f"text of at most {limits.max_prompt_chars} characters"


def read_param(param: Param, text: str, limits: Limits) -> object:
    """The typed value of ``param`` written as ``text``; ValueError when it is not allowed."""
    if param.kind is Kind.TEXT:
        if len(text) > limits.max_prompt_chars:
            raise ValueError("too long")
        return text
    if param.kind is Kind.BOOL:
        return read_bool(text)
    if param.kind is Kind.URL:
        return read_url(text)
    if param.kind is Kind.CHOICE:
        aliases = {"ar": ASPECT_RATIO_ALIASES, "controlnet": CONTROLNET_ALIASES}.get(param.name)
        return read_choice(text, param.choices, aliases)
    if param.kind is Kind.FLOAT:
        number = read_float(text)
        if not param.low <= number <= param.high:
            raise ValueError("out of range")
        return number
    number = read_int(text)
    low, high = (MIN_SIZE, limits.max_size) if param.kind is Kind.SIZE else (param.low, param.high)
    if not low <= number <= high or (param.kind is Kind.SIZE and number % SIZE_STEP):
        raise ValueError("out of range")
    return number


# ----------------------------------------------------------------------------------------------
# Sizes


def round_to_step(value: float) -> int:
    return max(SIZE_STEP, int(round(value / SIZE_STEP)) * SIZE_STEP)


def size_for_ar(ar: str, limits: Limits) -> tuple[int, int]:
    """Width and height for aspect ratio ``ar``: the short side is the native size, the long side
    follows the ratio; both are scaled down together when the long side passes the size cap, and
    rounded to multiples of 8 (never below the minimum size)."""
    ratio = ASPECT_RATIOS[ar]
    native = limits.native_size
    width, height = (native * ratio, native) if ratio >= 1 else (native, native / ratio)
    longest = max(width, height)
    if longest > limits.max_size:
        width, height = width * limits.max_size / longest, height * limits.max_size / longest
    return _clamp(width, limits), _clamp(height, limits)


def _clamp(side: float, limits: Limits) -> int:
    return min(limits.max_size, max(MIN_SIZE, round_to_step(side)))


def other_side(given: int, ar: str, given_is_width: bool) -> int:
    """The missing side for one given side and ``ar``, rounded to a multiple of 8."""
    ratio = ASPECT_RATIOS[ar]
    return round_to_step(given / ratio if given_is_width else given * ratio)


# ----------------------------------------------------------------------------------------------
# Wording


def shorten(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` cut to ``limit`` characters (ending in "..." when cut)."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def quote(value: str) -> str:
    """``value`` quoted for an error message, shortened to QUOTE_CHARS characters."""
    return repr(shorten(value))


#: Names other tools use for a parameter of this language (a hint in the error about such a name).
OTHER_NAMES = {
    "width": "w",
    "height": "h",
    "aspect_ratio": "ar",
    "sampler": "scheduler",
    "sampler_name": "scheduler",
    "guidance": "cfg_scale",
    "guidance_scale": "cfg_scale",
    "cfg": "cfg_scale",
    "num_inference_steps": "steps",
    "strength": "denoising_strength",
    "batch_size": "num_images",
    "n": "num_images",
    "negative": "negative_prompt",
    "upscale": "super_resolution",
    "restore_faces": "face_correct",
}


def unknown_name_hint(name: str) -> str:
    """What to write instead of ``name``, which is not a parameter (the end of the error about it)."""
    flag = name.lstrip("-")
    if flag in FLAG_NAMES:
        return f"{flag} is an inline flag, not a parameter; write --{flag} in the prompt text"
    hint = OTHER_NAMES.get(name.lower()) or closest(name, PARAMS)
    return f"did you mean {hint!r}?" if hint else "it is not a parameter of the language"


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most similar to ``name`` (difflib), else one that starts with it, if any."""
    by_lower = {k.lower(): k for k in known}
    wanted = name.lower()[:64]
    matches = difflib.get_close_matches(wanted, list(by_lower), n=1, cutoff=0.6)
    if matches:
        return by_lower[matches[0]]
    if len(wanted) >= 2:
        for lower, original in by_lower.items():
            if lower.startswith(wanted):
                return original
    return None
