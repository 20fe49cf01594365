"""Astria's bounds on list pages: ``limit`` 1..120, ``offset`` at most 10,000 (else 400)."""

from __future__ import annotations

from multipass_http_api.errors import HttpError

MAX_LIMIT = 120
MAX_OFFSET = 10_000


def check_offset(offset: int) -> None:
    """Above the bound, a 400 that names the keyset cursor to page with instead."""
    if offset > MAX_OFFSET:
        raise HttpError(
            400,
            f"offset {offset} is above {MAX_OFFSET:,}; page further with before_id",
            {"offset": [f"got {offset}; allowed: 0..{MAX_OFFSET}"]},
        )
