"""The BREAK keyword (§2): splitting text into segments, tidying segments, joining them.

``BREAK`` splits wherever it stands as a whole upper-case word (own line or inline), so it never reaches
a text encoder. Segments are trimmed, and a join never doubles or drops the separating comma. The word in
another case ("Break", "break") is text; where it looks meant as BREAK (alone on its line, or with a model
tag after it) the prompt gets a warning.
"""

from __future__ import annotations

import re

from multipass_prompt_parser.language import quote
from multipass_prompt_parser.tags import TAG_START

#: BREAK as a whole upper-case word.
BREAK = re.compile(r"(?<!\w)BREAK(?!\w)")

#: The word BREAK in another case than upper case.
_OTHER_CASE_BREAK = re.compile(r"(?<!\w)(?!BREAK(?!\w))(?i:break)(?!\w)")
_OWN_LINE = re.compile(r"[ \t]*(?i:break)[ \t]*")
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


def break_lookalikes(text: str) -> list[str]:
    """A warning for each "break" in another case than BREAK that looks meant to split: alone on its line,
    or followed later in the text by a model tag (a person's segment)."""
    warnings = []
    for found in _OTHER_CASE_BREAK.finditer(text):
        line_start = text.rfind("\n", 0, found.start()) + 1
        line_end = text.find("\n", found.end())
        line = text[line_start : line_end if line_end != -1 else len(text)]
        if _OWN_LINE.fullmatch(line):
            why = "it stands alone on its line"
        elif TAG_START.search(text, found.end()):
            why = "a model tag follows it"
        else:
            continue
        warnings.append(
            f"{quote(found.group(0))} is sent as text, not read as BREAK ({why}): only BREAK in upper case "
            "splits the prompt into segments"
        )
    return list(dict.fromkeys(warnings))
