"""Text a JSON body may carry that no protobuf string can: lone UTF-16 surrogates (``"\\ud800"``).

JSON lets a string escape half of a surrogate pair; Python decodes it into a ``str`` that cannot be
encoded as UTF-8, so a protobuf field refuses it. Bodies are checked as they are read, and the answer is
a 422 naming where the text is, not a failure deep in a conversion.
"""

from __future__ import annotations

import re

from multipass.errors import InvalidInput, Violation

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_DESCRIPTION = "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode text"


def encodable(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (has no lone surrogate)."""
    return _LONE_SURROGATE.search(text) is None


def check_text(text: str) -> str:
    """``text`` unchanged; ValueError (a validation error naming the field) when it cannot be encoded."""
    if not encodable(text):
        raise ValueError(_DESCRIPTION)
    return text


def unencodable_path(value: object, path: str = "") -> str | None:
    """Where in a decoded JSON value the first unencodable string is, named as a form field would be
    (``tune[title]``, ``tune[image_urls][2]``); None when there is none. Keys count as text too."""
    pending: list[tuple[str, object]] = [(path, value)]
    while pending:
        where, current = pending.pop()
        if isinstance(current, str):
            if not encodable(current):
                return where or "body"
        elif isinstance(current, dict):
            for key, item in current.items():
                name = f"{where}[{key}]" if where else str(key)
                if isinstance(key, str) and not encodable(key):
                    return where or "body"
                pending.append((name, item))
        elif isinstance(current, list | tuple):
            pending.extend((f"{where}[{index}]", item) for index, item in enumerate(current))
    return None


def refuse_unencodable(value: object) -> None:
    """InvalidInput naming the field when ``value`` holds text no protobuf string can carry."""
    where = unencodable_path(value)
    if where is not None:
        raise InvalidInput.of([Violation(where, _DESCRIPTION)])
