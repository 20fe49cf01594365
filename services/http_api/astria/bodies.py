"""Reading an Astria request body: JSON, ``multipart/form-data`` or urlencoded, into (name, value) pairs.

Files become :class:`~multipass_http_api.astria.prompt_form.Upload`. A malformed body is a 422 naming
what is wrong (Astria's clients expect 422 for anything about the request), never a 500; an oversized
body is refused with 413 by the service's body limit before this reads it.
"""

from __future__ import annotations

import json

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from multipass.errors import InvalidInput, Violation
from multipass_http_api.astria.prompt_form import Upload
from multipass_http_api.text_checks import refuse_unencodable

#: Largest non-file field of a multipart body (a prompt text is far below it).
MAX_FIELD_BYTES = 256 * 1024
MAX_PARTS = 200


def _bad_body(description: str) -> InvalidInput:
    return InvalidInput.of([Violation("body", description)])


async def read_json(request: Request) -> object:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise _bad_body(f"is not valid JSON ({str(error)[:120]})") from error
    except RecursionError as error:
        raise _bad_body("is JSON nested too deeply") from error
    refuse_unencodable(data)
    return data


async def read_form(request: Request) -> list[tuple[str, object]]:
    """The form's items in order; files read into memory (the body limit bounds them)."""
    try:
        form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as error:
        if error.status_code == 413:
            raise
        raise _bad_body(f"is not a valid form: {error.detail}") from error
    items: list[tuple[str, object]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                items.append(
                    (
                        key,
                        Upload(
                            value.filename or "upload", value.content_type or "application/octet-stream", data
                        ),
                    )
                )
            else:
                items.append((key, value))
    finally:
        await form.close()
    for key, value in items:
        refuse_unencodable({key: value} if isinstance(value, str) else key)
    return items


async def read_body(request: Request) -> tuple[str, object]:
    """``("json", data)`` or ``("form", items)``; an empty body reads as an empty JSON object."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return "form", await read_form(request)
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        return "json", await read_json(request)
    raise _bad_body(
        f"has content type {content_type[:60]!r}; expected application/json, multipart/form-data "
        "or application/x-www-form-urlencoded"
    )
