"""The BREAK keyword (§2): splitting text into segments, tidying segments, joining them.

``BREAK`` splits wherever it stands as a whole upper-case word (own line or inline), so it never reaches
a text encoder. Segments are trimmed, and a join never doubles or drops the separating comma.
"""

from __future__ import annotations

import re

#: BREAK as a whole upper-case word.
BREAK = re.compile(r"(?<!\w)BREAK(?!\w)")

_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_COMMA = re.compile(r" ,")
_REPEATED_COMMAS = re.compile(r",(?: ?,)+")


def split_on_break(text: str) -> list[str]:
    """The raw segments of ``text``; one segment when it has no BREAK."""
    return BREAK.split(text)


def tidy(text: str) -> str:
    """One segment's text: whitespace runs become one space, no space before a comma, no empty items
    between commas, no leading or trailing comma or space. Brackets, colons and weights are untouched."""
    text = _SPACE.sub(" ", text)
    text = _SPACE_BEFORE_COMMA.sub(",", text)
    text = _REPEATED_COMMAS.sub(",", text)
    return text.strip(" ,")


def join(*parts: str) -> str:
    """The non-empty parts joined as "first, second"."""
    kept = [part.strip(" ,") for part in parts]
    return ", ".join(part for part in kept if part)
