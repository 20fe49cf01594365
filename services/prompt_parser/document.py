"""Splitting a prompt document into its text and its trailing ``name=value`` block (§1).

The block is the run of trailing lines shaped ``name=value`` (``name`` one word of letters, digits and
underscores; blank lines may sit between and after them). Every name in the block must be a known
parameter: an unknown one is an error naming it and the closest known name. A text line that merely
looks like ``word=value`` at the very end of the prompt therefore has to be rephrased; this keeps a
typo such as ``stesp=30`` from reaching the text encoder unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multipass_prompt_parser.language import PARAMS, closest, quote, shorten
from multipass_prompt_parser.problems import Problems

_BLOCK_LINE = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=(.*)")


@dataclass(frozen=True)
class Document:
    """The prompt text and the block's values by parameter name (empty values left out)."""

    text: str
    block: dict[str, str]
    #: Names that appeared in the block, empty or not.
    block_names: frozenset[str]


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_document(document: str, problems: Problems) -> Document:
    """The text before the block and the block's values; block problems go to ``problems``."""
    lines = normalise_newlines(document).split("\n")
    start = len(lines)
    entries: list[tuple[int, str, str]] = []
    for number in range(len(lines) - 1, -1, -1):
        line = lines[number]
        if not line.strip():
            continue
        match = _BLOCK_LINE.fullmatch(line)
        if match is None:
            break
        entries.append((number + 1, match[1], match[2].strip()))
        start = number
    entries.reverse()

    block: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line_number, name, value in entries:
        if name not in PARAMS:
            hint = closest(name, PARAMS)
            suggestion = f"; did you mean {hint!r}?" if hint else "; it is not a parameter of the language"
            problems.add(
                f"params.{shorten(name)}",
                f"unknown parameter {quote(name)} on line {line_number} of the parameter block{suggestion}",
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
    return Document(text="\n".join(lines[:start]), block=block, block_names=frozenset(seen))
