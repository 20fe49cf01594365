"""Inline flags (§4): ``--name`` or ``--name value`` anywhere in the prompt text.

A flag starts with ``--`` and a letter, not preceded by a word character or a hyphen (so ``semi--gloss``
is text). Its value runs to the next flag, ``BREAK``, model tag or the end of the line, and is trimmed;
``--name=value`` is the same as ``--name value`` (one ``=`` right after the name is not part of the value).
Flags are removed from the text before it is split on BREAK. A known flag glued to the word before it, or
written with a typographic dash instead of ``--``, is an error, and so is a flag name with hyphens for
underscores (named as written, with the flag meant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multipass_prompt_parser.breaks import BREAK
from multipass_prompt_parser.language import (
    DILATE_PERCENT_MAX,
    FLAG_NAMES,
    PARAMS,
    VALUELESS_FLAGS,
    Flag,
    Limits,
    closest,
    quote,
    read_float,
    shorten,
)
from multipass_prompt_parser.problems import Problems
from multipass_prompt_parser.tags import TAG_START

#: A flag's name may hold single hyphens ("--mask-invert") so that such a misspelling is named whole.
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*)")
#: A known flag glued to the word before it ("BREAK--mask_invert", "room--mask_prompt"): not a flag by the
#: rule above, and surely not meant as text either.
GLUED_FLAG = re.compile(r"(?<=\w)--(" + "|".join(FLAG_NAMES) + r")(?![\w-])")
#: A known flag written with a typographic dash ("—mask_prompt", as editors turn "--" into): text to the encoder
#: otherwise, and surely meant as the flag.
DASHED_FLAG = re.compile(r"[\u2012-\u2015\u2212]-?(" + "|".join(FLAG_NAMES) + r")(?![\w-])")
_PIXELS = re.compile(r"[+-]?[0-9]{1,9}")
_PERCENT = re.compile(r"([+-]?(?:[0-9]{1,9}(?:\.[0-9]*)?|\.[0-9]+))\s*%")


@dataclass(frozen=True)
class FlagValues:
    """The flags given; unset ones hold their "not given" value."""

    mask_prompt: str = ""
    mask_negative: str = ""
    mask_invert: bool = False
    dilate_pixels: int | None = None
    dilate_percent: float | None = None
    hires_denoising_strength: float | None = None
    tiled_upscale: bool = False
    only_upscale: bool = False

    @property
    def has_mask(self) -> bool:
        return bool(
            self.mask_prompt
            or self.mask_negative
            or self.mask_invert
            or self.dilate_pixels is not None
            or self.dilate_percent is not None
        )


def _value_end(text: str, start: int, limit: int) -> int:
    """Where a flag value starting at ``start`` ends (exclusive), at ``limit`` at the latest."""
    ends = [limit]
    newline = text.find("\n", start, limit)
    if newline != -1:
        ends.append(newline)
    for pattern in (BREAK, TAG_START):
        found = pattern.search(text, start, limit)
        if found is not None:
            ends.append(found.start())
    return min(ends)


def _flag_value(written: str) -> str:
    """The value of a flag as written after its name: trimmed, without the ``=`` of ``--name=value``."""
    value = written.strip()
    return value[1:].strip() if value.startswith("=") else value


def extract_flags(text: str, problems: Problems, limits: Limits) -> tuple[str, FlagValues]:
    """``text`` without its flags, and the flag values; flag problems go to ``problems``."""
    matches = list(FLAG.finditer(text))
    pieces: list[str] = []
    position = 0
    values: dict[str, object] = {}
    seen: set[str] = set()
    for index, match in enumerate(matches):
        limit = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        end = _value_end(text, match.end(), limit)
        pieces.append(text[position : match.start()])
        pieces.append(" ")
        position = end
        _read_flag(match[1], _flag_value(text[match.end() : end]), values, seen, problems, limits)
    pieces.append(text[position:])
    for glued in GLUED_FLAG.finditer(text):
        word_start = max(text.rfind(" ", 0, glued.start()), text.rfind("\n", 0, glued.start())) + 1
        written = text[word_start : glued.end()]
        problems.add(
            f"flag --{glued[1]}",
            f"--{glued[1]} is glued to the word before it in {quote(written)}; put a space before the flag",
        )
    for dashed in DASHED_FLAG.finditer(text):
        problems.add(
            f"flag --{dashed[1]}",
            f"--{dashed[1]} is written {quote(dashed[0])}, with a typographic dash; write two hyphens: --{dashed[1]}",
        )
    return "".join(pieces), FlagValues(**values)


def _read_flag(
    name: str, raw: str, values: dict[str, object], seen: set[str], problems: Problems, limits: Limits
) -> None:
    field = f"flag --{shorten(name)}"
    if name not in FLAG_NAMES:
        if name in PARAMS:
            problems.add(
                field,
                f"--{name} is not a flag; {name} is a parameter: write {name}=VALUE in the parameter block",
            )
            return
        if name.replace("-", "_") in FLAG_NAMES:
            underscored = name.replace("-", "_")
            problems.add(
                field, f"unknown flag --{shorten(name)}; flag names use underscores: --{underscored}"
            )
            return
        hint = closest(name, FLAG_NAMES)
        suggestion = (
            f"did you mean --{hint}?" if hint else "known flags: " + ", ".join(f"--{f}" for f in FLAG_NAMES)
        )
        problems.add(field, f"unknown flag --{shorten(name)}; {suggestion}")
        return
    flag = Flag(name)
    if flag.value in seen:
        problems.add(field, f"--{name} is given twice; keep one")
        return
    seen.add(flag.value)
    if flag in VALUELESS_FLAGS:
        if raw:
            problems.add(
                field,
                f"--{name} takes no value but is followed by {quote(raw)}; put other text before the flags",
            )
            return
        values[flag.value] = True
        return
    if not raw:
        problems.add(field, f"--{name} needs a value: {_expected(flag, limits)}")
        return
    if flag in (Flag.MASK_PROMPT, Flag.MASK_NEGATIVE):
        values[flag.value] = raw
    elif flag is Flag.MASK_DILATE:
        _read_dilate(raw, values, problems, field, limits)
    elif flag is Flag.HIRES_DENOISING_STRENGTH:
        strength = _strength(raw)
        if strength is None:
            problems.add(field, f"got {quote(raw)}; allowed: {_expected(flag, limits)}")
            return
        values[flag.value] = strength


def _strength(raw: str) -> float | None:
    """A denoising strength in 0..1, or None when ``raw`` is not one."""
    try:
        strength = read_float(raw)
    except ValueError:
        return None
    return strength if 0.0 <= strength <= 1.0 else None


def _read_dilate(raw: str, values: dict[str, object], problems: Problems, field: str, limits: Limits) -> None:
    if _PIXELS.fullmatch(raw):
        pixels = int(raw)
        if abs(pixels) <= limits.max_size:
            values["dilate_pixels"] = pixels
            return
    elif (percent := _PERCENT.fullmatch(raw)) is not None:
        amount = float(percent[1])
        if abs(amount) <= DILATE_PERCENT_MAX:
            values["dilate_percent"] = amount
            return
    problems.add(field, f"got {quote(raw)}; allowed: {_expected(Flag.MASK_DILATE, limits)}")


def _expected(flag: Flag, limits: Limits) -> str:
    if flag is Flag.MASK_DILATE:
        return (
            f"a signed whole number of pixels in -{limits.max_size}..{limits.max_size}, or a signed percent "
            f"of the shorter side in -{DILATE_PERCENT_MAX:g}%..{DILATE_PERCENT_MAX:g}% (e.g. -20%)"
        )
    if flag is Flag.HIRES_DENOISING_STRENGTH:
        return "a number in 0..1"
    if flag is Flag.MASK_PROMPT:
        return "what to segment, e.g. 'foreground', 'person', 'windows door'"
    return "what to cut out of the mask, e.g. 'clothes hat shoes'"
