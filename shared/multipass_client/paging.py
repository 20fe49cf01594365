"""Following the page tokens of a list rpc."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def pages(fetch: Callable[[str], Any]) -> Iterator[Any]:
    """Each page ``fetch(page_token)`` answers, from the first ("") until one has no ``next_page_token``."""
    token = ""
    while True:
        page = fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
