"""Opaque page tokens of the list rpcs: the position a page ends at, which the next page continues after."""

from __future__ import annotations

import base64
import binascii

from multipass.errors import InvalidInput, Violation


def page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode()


def parse_page_token(token: str, field: str = "page_token") -> str:
    """The position ``token`` continues after ("" for no token); INVALID_ARGUMENT naming ``field`` for
    anything that is not a token of :func:`page_token`."""
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith("after:") or not text[6:]:
        raise InvalidInput.of([Violation(field, "is not a token from a previous response")])
    return text[6:]
