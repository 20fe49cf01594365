"""Splitting a prompt document into its text and its trailing ``name=value`` block (§1).

The block is the run of trailing lines shaped ``name=value`` (``name`` one word of letters, digits and
underscores; blank lines may sit between and after them). Every name in the block must be a known
parameter: an unknown one is an error naming it and the closest known name. A text line that merely
looks like ``word=value`` at the very end of the prompt therefore has to be rephrased; this keeps a
typo such as ``stesp=30`` from reaching the text encoder unnoticed.

Lines of inline flags only (``--tiled_upscale``) may sit among or after the block's lines: they stay
text (the flags are read from it) and do not end the block. A text line above the block shaped like a
parameter (``steps=20`` followed by more text) is text, with a warning that says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multipass_prompt_parser.language import PARAMS, quote, shorten, unknown_name_hint
from multipass_prompt_parser.problems import Problems

_BLOCK_LINE = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=(.*)")
#: A line of inline flags only ("--tiled_upscale"): text, but it does not end the block above it.
_FLAG_LINE = re.compile(r"[ \t]*--[A-Za-z].*")


@dataclass(frozen=True)
class Document:
    """The prompt text and the block's values by parameter name (empty values left out)."""

    text: str
    block: dict[str, str]
    #: Names that appeared in the block, empty or not.
    block_names: frozenset[str]
    #: Lines of the text shaped like a parameter, which are sent as text (they are not at the end).
    warnings: tuple[str, ...] = ()


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_document(document: str, problems: Problems) -> Document:
    """The text before the block and the block's values; block problems go to ``problems``."""
    lines = normalise_newlines(document).split("\n")
    start = len(lines)
    entries: list[tuple[int, str, str]] = []
    flag_lines: list[str] = []
    for number in range(len(lines) - 1, -1, -1):
        line = lines[number]
        if not line.strip():
            continue
        if _FLAG_LINE.fullmatch(line):
            flag_lines.append(line)
            start = number
            continue
        match = _BLOCK_LINE.fullmatch(line)
        if match is None:
            break
        entries.append((number + 1, match[1], match[2].strip()))
        start = number
    entries.reverse()
    flag_lines.reverse()
    text_lines = lines[:start]
    if not entries:  # no block: the flag lines stay where they were
        text_lines, flag_lines = lines, []

    block: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line_number, name, value in entries:
        if name not in PARAMS:
            problems.add(
                f"params.{shorten(name)}",
                f"unknown parameter {quote(name)} on line {line_number} of the parameter block; "
                + unknown_name_hint(name),
            )
            continue
        if name in seen:
            problems.add(
                f"params.{name}",
                f"given twice in the parameter block (lines {seen[name]} and {line_number}); keep one",
            )
            continue
        seen[name] = line_number
        if value:
            block[name] = value
    return Document(
        text="\n".join([*text_lines, *flag_lines]),
        block=block,
        block_names=frozenset(seen),
        warnings=_parameters_in_text(text_lines),
    )


def _parameters_in_text(lines: list[str]) -> tuple[str, ...]:
    """A warning for each text line shaped ``name=value`` with a parameter's name: such a line is sent to
    the text encoder, because only the lines at the very end of the prompt form the parameter block."""
    warnings = []
    for number, line in enumerate(lines, start=1):
        match = _BLOCK_LINE.fullmatch(line)
        if match is not None and match[1] in PARAMS:
            warnings.append(
                f"line {number} ({quote(line.strip())}) is sent as prompt text, not read as a parameter: "
                "the parameter block is the run of name=value lines at the end of the prompt"
            )
    return tuple(warnings)
