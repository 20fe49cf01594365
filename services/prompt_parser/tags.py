"""Model tags (§3): ``<lora:ID:WEIGHT>`` and ``<faceid:ID:WEIGHT>``, found and removed from a segment.

``WEIGHT`` defaults to 1 (``<lora:ID>``). A tag that is not closed, names an unknown kind, has an
empty or malformed id, or a weight that is not a number in range is an error naming the tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multipass_prompt_parser.language import (
    TAG_ID_MAX_CHARS,
    TAG_KINDS,
    TAG_WEIGHT_MAX,
    TAG_WEIGHT_MIN,
    closest,
    quote,
    read_float,
    shorten,
)
from multipass_prompt_parser.problems import Problems

#: The start of anything shaped like a tag: "<word:".
TAG_START = re.compile(r"<([A-Za-z][A-Za-z0-9_]*):")
#: A tag written with spaces inside its start ("< lora:", "<lora :"), which would reach the encoder as text.
_SPACED_TAG_START = re.compile(r"<\s+(lora|faceid)\s*:|<(lora|faceid)\s+:", re.IGNORECASE)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_EXCERPT_END = re.compile(r"[\s<]")
USAGE = f"write <lora:ID:WEIGHT> or <faceid:ID:WEIGHT> with WEIGHT a number in {TAG_WEIGHT_MIN:g}..{TAG_WEIGHT_MAX:g}"


@dataclass(frozen=True)
class ModelTag:
    """One tag: its kind ("lora" or "faceid"), tune id or LoRA name, weight, and the tag as written."""

    kind: str
    tune_id: str
    weight: float
    tag: str


def _unclosed_excerpt(segment: str, start: int, after: int) -> str:
    end = _EXCERPT_END.search(segment, after)
    return segment[start : end.start() if end else len(segment)]


def extract_tags(segment: str, problems: Problems, where: str) -> tuple[str, list[ModelTag]]:
    """``segment`` without its tags, and the tags in the order written; ``where`` names the segment."""
    pieces: list[str] = []
    tags: list[ModelTag] = []
    position = 0
    search_from = 0
    while (match := TAG_START.search(segment, search_from)) is not None:
        start, after = match.start(), match.end()
        close = segment.find(">", after)
        stray = [i for i in (segment.find("<", after), segment.find("\n", after)) if i != -1]
        if close == -1 or (stray and min(stray) < close):
            excerpt = _unclosed_excerpt(segment, start, after)
            problems.add(
                f"tag {shorten(excerpt)}", f"tag {quote(excerpt)} in {where} is not closed with '>'; {USAGE}"
            )
            search_from = after
            continue
        written = segment[start : close + 1]
        tag = _read_tag(match[1], written, problems, where)
        if tag is not None:
            tags.append(tag)
        pieces.append(segment[position:start])
        pieces.append(" ")
        position = search_from = close + 1
    pieces.append(segment[position:])
    rest = "".join(pieces)
    for spaced in _SPACED_TAG_START.finditer(rest):
        excerpt = _unclosed_excerpt(rest, spaced.start(), spaced.end())
        if excerpt.endswith(":") or not excerpt.strip("<: "):
            excerpt = rest[spaced.start() : rest.find(">", spaced.end()) + 1 or len(rest)]
        problems.add(
            f"tag {shorten(excerpt)}",
            f"tag {quote(excerpt)} in {where} has a space inside its start; {USAGE} (no spaces around '<' "
            "and before ':')",
        )
    return rest, tags


def _read_tag(kind_written: str, written: str, problems: Problems, where: str) -> ModelTag | None:
    field = f"tag {shorten(written)}"
    kind = kind_written.lower()
    if kind not in TAG_KINDS:
        hint = closest(kind, TAG_KINDS)
        suggestion = f"did you mean <{hint}:...>? " if hint else ""
        problems.add(field, f"unknown tag kind {quote(kind_written)} in {where}; {suggestion}{USAGE}")
        return None
    parts = written[1:-1].split(":")
    if len(parts) > 3:
        problems.add(field, f"tag {quote(written)} in {where} has {len(parts)} parts; {USAGE}")
        return None
    tune_id = parts[1].strip()
    ok = True
    if not tune_id:
        problems.add(field, f"tag {quote(written)} in {where} has no id; {USAGE}")
        ok = False
    elif len(tune_id) > TAG_ID_MAX_CHARS or not _ID.fullmatch(tune_id):
        problems.add(
            field,
            f"id {quote(tune_id)} of tag in {where} is not a tune id or LoRA name "
            f"(letters, digits, '_', '.', '-'; at most {TAG_ID_MAX_CHARS} characters)",
        )
        ok = False
    weight = 1.0
    if len(parts) == 3:
        weight_text = parts[2].strip()
        try:
            weight = read_float(weight_text)
        except ValueError:
            problems.add(field, f"weight {quote(weight_text)} of tag in {where} is not a number; {USAGE}")
            return None
        if not TAG_WEIGHT_MIN <= weight <= TAG_WEIGHT_MAX:
            problems.add(field, f"weight {quote(weight_text)} of tag in {where} is out of range; {USAGE}")
            return None
    return ModelTag(kind=kind, tune_id=tune_id, weight=weight, tag=written) if ok else None


def find_tag_starts(text: str) -> list[str]:
    """Every "<word:" in ``text``, as written (to refuse tags where they are not allowed)."""
    return [match.group(0) for match in TAG_START.finditer(text)]
