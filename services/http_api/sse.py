"""Server-Sent Events framing (the text/event-stream format of the HTML standard)."""

from __future__ import annotations

import json
from typing import Any


def sse_event(event_id: int | None, kind: str, data: Any) -> bytes:
    """One event: ``id``, ``event`` and one ``data`` line of compact JSON (JSON has no raw newlines).

    An event without an id (``None``: a stream's error) leaves the client's last event id as it was, so a
    reconnection resumes after the last job event it got.
    """
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {payload}\n\n".encode()


def sse_comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies and idle connections open."""
    return f": {text}\n\n".encode()


def sse_retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    return f"retry: {milliseconds}\n\n".encode()
