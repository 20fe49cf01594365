"""Uploads over HTTP: an input or mask image stored for ``POST /v1/jobs`` (``input_image_id`` /
``mask_image_id``), and its deletion; each call is one call of the gateway's Jobs API.

The body is the image file itself (any ``image/*`` or ``application/octet-stream`` content type, streamed to
the gateway in 1 MiB chunks), or ``multipart/form-data`` with the file in a field named ``file``. The
gateway decodes and checks it (size, pixels, format) and keeps it until its ``expires_at`` or DELETE.
"""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import APIRouter, Request, Response, status

from multipass.errors import InvalidInput, Violation
from multipass_http_api.deps import Authorization, Gateway
from multipass_http_api.errors import http_error_for_rpc

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

#: Largest multipart body part that is not the file (a form's other fields are ignored).
_MAX_FORM_FIELD = 64 * 1024


async def _file(request: Request) -> tuple[str, Any, str]:
    """(file name, its bytes as chunks, the field that holds them) from a raw image body or a multipart
    ``file`` field."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8, max_part_size=_MAX_FORM_FIELD)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput.of(
                [Violation("file", "a multipart upload needs the image in a field named 'file'")]
            )
        return upload.filename or "image", [await upload.read()], "file"
    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise InvalidInput.of(
            [
                Violation(
                    "body",
                    f"got Content-Type {content_type[:60]!r}; expected image/*, application/octet-stream or multipart/form-data",
                )
            ]
        )
    return request.headers.get("x-filename", "image")[:200], request.stream(), "body"


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload_image(request: Request, authorization: Authorization, gateway: Gateway) -> dict[str, Any]:
    """Store an image for a job; answers its ``image_id`` (for ``input_image_id``/``mask_image_id``), size and
    ``expires_at``."""
    filename, chunks, field = await _file(request)
    try:
        uploaded = await gateway.upload_image(authorization, filename, chunks)
    except grpc.RpcError as error:  # the gateway names the gRPC field, "chunk": name this request's
        raise http_error_for_rpc(error).renamed(lambda name: field if name == "chunk" else name) from error
    return {
        "image_id": uploaded.image_id,
        "width": uploaded.image.width,
        "height": uploaded.image.height,
        "expires_at": uploaded.expires_at.ToJsonString() if uploaded.HasField("expires_at") else None,
    }


@router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_upload(image_id: str, authorization: Authorization, gateway: Gateway) -> Response:
    """Delete one of your uploads now (jobs that used it keep their own copies); 404 when you have none by
    that id."""
    await gateway.delete_upload(authorization, image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
