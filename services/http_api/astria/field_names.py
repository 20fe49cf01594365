"""The gateway's field names in errors, spelled as Astria's clients sent them (``params.steps`` →
``prompt[steps]``), on top of the service's one mapping of gRPC statuses to HTTP answers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from multipass_http_api.errors import PART_OF_A_FIELD, http_error_for_rpc

T = TypeVar("T")

#: Gateway field → prompt field, for fields that are not ``params.<name>``.
_PROMPT_FIELDS = {
    "prompt": "text",
    "callback_url": "callback",
    "input_image_id": "input_image",
    "mask_image_id": "mask_image",
}
_TUNE_FIELDS = {
    "metadata.name": "title",
    "metadata.class_name": "name",
    "metadata.token": "token",
    "metadata.base_family": "branch",
    "metadata.kind": "model_type",
    "metadata.url": "weights_url",
    "metadata.sha256": "sha256",
    "chunk": "weights",
}


def prompt_field(field: str) -> str:
    """``params.steps`` → ``prompt[steps]``; prompt text problems (``tag <lora:1:9>``, ``flag --mask_dilate``,
    BREAK) → ``prompt[text]``."""
    if field.startswith("params."):
        return f"prompt[{field.removeprefix('params.')}]"
    if field in _PROMPT_FIELDS:
        return f"prompt[{_PROMPT_FIELDS[field]}]"
    if field.startswith(("<", "--", "prompt.", "segment", "break", "text", *PART_OF_A_FIELD)):
        return "prompt[text]"
    return field


def tune_field(field: str) -> str:
    if field in _TUNE_FIELDS:
        return f"tune[{_TUNE_FIELDS[field]}]"
    if field.startswith("metadata.reference_image_ids"):
        return "tune[images][]"
    if field.startswith("metadata.reference_image_urls"):
        return "tune[image_urls][]"
    for prefix in ("metadata.characteristics", "characteristics"):  # RegisterTune's, UpdateTune's
        if field.startswith(prefix):  # ...[NAME]
            return "tune[characteristics]" + field[len(prefix) :]
    return field


async def call(
    awaitable: Awaitable[T],
    rename=prompt_field,
    *,
    fields: dict[str, str] | None = None,
    submitted_body: bool = False,
) -> T:
    """The gateway call's result; its error as the HTTP answer with Astria field names.

    ``fields`` renames specific gateway fields for this call (an upload's ``chunk`` is the form's file).
    ``submitted_body``: the call submits the request's body, so a missing thing it names is a 422.
    """
    try:
        return await awaitable
    except grpc.RpcError as error:
        mapping = fields or {}
        answer = http_error_for_rpc(error).renamed(lambda name: mapping.get(name) or rename(name))
        raise (answer.as_body_fault() if submitted_body else answer) from error
