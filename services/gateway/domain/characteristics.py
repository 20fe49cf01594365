"""Tune characteristics: named texts a prompt writes as ``{{name}}`` (Astria's ``characteristics``).

A tune may carry up to :data:`MAX_ENTRIES` names, each with a text (``eye_color`` -> ``"blue eyes"``). After
the prompt is parsed and its tunes are read, every well-formed placeholder (``{{eye_color}}``,
``{{ eye_color }}``) in the texts the passes encode is replaced:

- in a person's prompt, and in the common prompt appended to it, by the person's tunes (its tags, then the
  common tags, in the order written);
- in the base prompt by the base tags' tunes, then the common tags';
- where those tunes do not define the name, by the value every tune of the prompt that defines it agrees on;
- the common prompt also reaches the base pass: there a placeholder that only the persons' tunes fill, each
  differently, is left out (with a warning); each person's pass gets its own value.

A name no tune of the prompt defines, or defines differently where the scope cannot choose, is refused
naming the placeholder and what the tunes offer: a placeholder sent to the text encoder as it is would only
make the image silently worse. Text that is not a well-formed placeholder (``{{}}``, ``{{ two words }}``)
stays as written.

Filling may make a text at most :data:`MAX_ADDED_CHARS` characters longer than it was written: a short
placeholder repeated across a whole prompt would otherwise grow it forty-fold past the prompt length limit,
and every pass encodes its text, chunk by chunk, at that cost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from multipass.errors import Violation, echo
from multipass.v1 import prompt_pb2

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
MAX_ENTRIES = 32
MAX_VALUE_CHARS = 200
#: How many characters filling may add to one text (ten values of the longest length).
MAX_ADDED_CHARS = 10 * MAX_VALUE_CHARS


def check(characteristics: Mapping[str, str], field: str = "metadata.characteristics") -> list[Violation]:
    """Violations of a tune's characteristics as registered (names, count, values)."""
    problems: list[Violation] = []
    if len(characteristics) > MAX_ENTRIES:
        problems.append(Violation(field, f"got {len(characteristics)} names; at most {MAX_ENTRIES}"))
        return problems
    for name, value in sorted(characteristics.items()):
        if not NAME.match(name):
            problems.append(
                Violation(
                    field,
                    f"got the name {echo(name)}; expected a letter or underscore then letters, digits or "
                    "underscores (at most 64 characters), e.g. eye_color",
                )
            )
        elif len(value) > MAX_VALUE_CHARS or not value.isprintable():
            problems.append(
                Violation(
                    f"{field}[{name}]",
                    f"got {echo(value)}; expected at most {MAX_VALUE_CHARS} printable characters",
                )
            )
    return problems


def uses_placeholders(parsed: prompt_pb2.ParsedPrompt) -> bool:
    return any(PLACEHOLDER.search(text) for text in _texts(parsed))


def apply(
    parsed: prompt_pb2.ParsedPrompt, characteristics: Mapping[str, Mapping[str, str]]
) -> list[Violation]:
    """Replace the placeholders of ``parsed`` in place from ``characteristics`` (tune id -> names);
    the violations of the placeholders that cannot be filled (``parsed`` is then left as it was)."""
    if not uses_placeholders(parsed):
        return []
    common = [ref.tune_id for ref in parsed.common_loras]
    every = list(
        dict.fromkeys(
            [ref.tune_id for ref in parsed.base_loras]
            + common
            + [ref.tune_id for person in parsed.persons for ref in person.loras]
        )
    )
    fallback = _agreed(characteristics, every)
    problems: list[Violation] = []
    filled = prompt_pb2.ParsedPrompt()
    filled.CopyFrom(parsed)

    left_out: list[str] = []
    overgrown: set[str] = set()  # the parts already refused for growing too long

    def fill(text: str, scope: Sequence[str], where: str, strict: frozenset[str] | None = None) -> str:
        """``strict``: the names that must be filled (None: all); others that cannot be are left out."""
        names = _first_defined(characteristics, scope)
        dropped = False

        def replace(match: re.Match) -> str:
            nonlocal dropped
            name = match.group(1)
            if name in names:
                return names[name]
            if isinstance(fallback.get(name), str):
                return fallback[name]
            if strict is not None and name not in strict:
                left_out.append(match.group(0))
                dropped = True
                return ""
            problems.append(_unfilled(match.group(0), name, where, scope or every, characteristics, fallback))
            return match.group(0)

        result = PLACEHOLDER.sub(replace, text)
        if len(result) - len(text) > MAX_ADDED_CHARS:
            if where in overgrown:
                return text
            overgrown.add(where)
            problems.append(
                Violation(
                    "prompt",
                    f"the {{{{name}}}} placeholders of {where} add {len(result) - len(text)} characters; "
                    f"at most {MAX_ADDED_CHARS} may be added (write each placeholder once)",
                )
            )
            return text
        return _tidy(result) if dropped else result

    # The base pass sees the common prompt too: a placeholder of the common prompt that only the persons'
    # tunes can fill (each differently) is left out of it; each person pass gets its own value.
    base_scope = list(dict.fromkeys([ref.tune_id for ref in parsed.base_loras] + common))
    base_names = frozenset(
        match.group(1)
        for text in (parsed.base_prompt, parsed.negative_base)
        for match in PLACEHOLDER.finditer(text)
    )
    for name in ("base_prompt", "negative_base"):
        setattr(filled, name, fill(getattr(parsed, name), base_scope, "the base prompt"))
    for name in ("base_effective_prompt", "base_effective_negative_prompt"):
        setattr(filled, name, fill(getattr(parsed, name), base_scope, "the base prompt", base_names))
    for person, target in zip(parsed.persons, filled.persons, strict=True):
        scope = list(dict.fromkeys([ref.tune_id for ref in person.loras] + common))
        where = f"person {person.index}'s prompt"
        for name in ("prompt", "negative_prompt", "effective_prompt", "effective_negative_prompt"):
            setattr(target, name, fill(getattr(person, name), scope, where))
    if not parsed.persons:  # the common prompt is only the base's: its placeholders must be filled there
        fill(parsed.common_prompt, base_scope, "the common prompt")
        fill(parsed.negative_common, base_scope, "the common prompt")
    problems = list({(v.field, v.description): v for v in problems}.values())
    if not problems:
        for written in dict.fromkeys(left_out):
            filled.warnings.append(
                f"{written} of the common prompt is left out of the base pass: the persons' tunes give it "
                "different values; each person's pass uses its own"
            )
        parsed.CopyFrom(filled)
    return problems


def _tidy(text: str) -> str:
    """Commas and spaces left where a placeholder was taken out."""
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    return re.sub(r"^[\s,]+|[\s,]+$", "", re.sub(r"\s{2,}", " ", text))


def _texts(parsed: prompt_pb2.ParsedPrompt) -> Iterable[str]:
    yield from (parsed.base_prompt, parsed.common_prompt, parsed.base_effective_prompt)
    yield from (parsed.negative_base, parsed.negative_common, parsed.base_effective_negative_prompt)
    for person in parsed.persons:
        yield from (person.prompt, person.negative_prompt, person.effective_prompt)
        yield person.effective_negative_prompt


def _first_defined(
    characteristics: Mapping[str, Mapping[str, str]], tune_ids: Sequence[str]
) -> dict[str, str]:
    names: dict[str, str] = {}
    for tune_id in tune_ids:
        for name, value in characteristics.get(tune_id, {}).items():
            names.setdefault(name, value)
    return names


#: A name the prompt's tunes define differently (a fallback that cannot choose).
_DISAGREE = object()


def _agreed(characteristics: Mapping[str, Mapping[str, str]], tune_ids: Sequence[str]) -> dict[str, object]:
    agreed: dict[str, object] = {}
    for tune_id in tune_ids:
        for name, value in characteristics.get(tune_id, {}).items():
            agreed[name] = value if agreed.get(name, value) == value else _DISAGREE
    return agreed


def _unfilled(
    written: str,
    name: str,
    where: str,
    scope: Sequence[str],
    characteristics: Mapping[str, Mapping[str, str]],
    fallback: Mapping[str, object],
) -> Violation:
    if fallback.get(name) is _DISAGREE:
        tunes = ", ".join(t for t, names in characteristics.items() if name in names)
        return Violation(
            "prompt",
            f"{written} in {where}: tunes {tunes} give {name} different values and none of them is "
            "this part's tune; write it in the person's prompt, after that person's <lora:...> tag",
        )
    offered = sorted({n for t in scope for n in characteristics.get(t, {})})
    if not scope:
        detail = "the prompt has no <lora:...> or <faceid:...> tag whose tune could define it"
    elif offered:
        detail = f"tune {', '.join(scope)} defines {', '.join(offered)}"
    else:
        detail = f"tune {', '.join(scope)} has no characteristics"
    return Violation(
        "prompt", f"{written} in {where} is not a characteristic of the prompt's tunes: {detail}"
    )
