"""A job's stored images over HTTP: one pass output or mask, or everything as a zip.

The gateway decides whether the caller may see the job (GetJob with the caller's key); only images that
job lists are read from the object store, so a caller can reach nothing else in the bucket.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response, StreamingResponse

from multipass.store import ObjectStore
from multipass_http_api.deps import Authorization, BaseUrl, Gateway, Objects
from multipass_http_api.errors import HttpError
from multipass_http_api.job_views import job_files, job_view

router = APIRouter(prefix="/v1/jobs", tags=["files"])

FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "The PNG image."}}
ZIP_RESPONSE = {200: {"content": {"application/zip": {}}, "description": "job.json and every image."}}


def _store(objects):
    if objects is None:
        raise HttpError(503, "image downloads are not configured on this service")
    return objects


@router.get("/{job_id}/files/{image}/{name}.png", response_class=Response, responses=PNG_RESPONSE)
async def job_file(
    job_id: str,
    image: Annotated[int, Path(ge=0, le=64, description="Index of the output image.")],
    name: Annotated[str, Path(max_length=64, description="A pass name, mask-<name>, or final.")],
    authorization: Authorization,
    gateway: Gateway,
    objects: Objects,
) -> Response:
    """One stored image of the job: a pass output (``base``, ``person-0``, ...), a mask (``mask-person-0``)
    or ``final``."""
    job = await gateway.get_job(authorization, job_id)
    for entry in job_files(job):
        if entry["image"] == image and entry["name"] == name:
            ref = entry["ref"]
            data = await _store(objects).get_bytes(ref.bucket, ref.key, field="file")
            return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
    shown = name if FILE_NAME.match(name) else "that name"
    raise HttpError(404, f"job {job_id} has no image {image}/{shown} (yet)")


@router.get("/{job_id}/archive.zip", response_class=StreamingResponse, responses=ZIP_RESPONSE)
async def job_archive(
    job_id: str, authorization: Authorization, gateway: Gateway, objects: Objects, base_url: BaseUrl
) -> StreamingResponse:
    """``job.json`` and every stored image of the job (``image-<k>/<name>.png``) in one zip, streamed as it
    is made: one image at a time in memory, whatever the job's size."""
    job = await gateway.get_job(authorization, job_id)
    store = _store(objects)
    return StreamingResponse(
        _zip_stream(job, base_url, store),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


class _ZipSink(io.RawIOBase):
    """Where the zip is written: bytes taken away as soon as each entry is done (not seekable, so the
    zip module writes each entry's sizes with it)."""

    def __init__(self):
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        parts, self._parts = self._parts, []
        return b"".join(parts)


async def _zip_stream(job, base_url: str, store: ObjectStore) -> AsyncIterator[bytes]:
    sink = _ZipSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("job.json", json.dumps(job_view(job, base_url), indent=2, ensure_ascii=False))
        yield sink.take()
        for entry in job_files(job):
            ref = entry["ref"]
            data = await store.get_bytes(ref.bucket, ref.key, field="file")
            archive.writestr(f"image-{entry['image']}/{entry['name']}.png", data)
            del data
            yield sink.take()
    yield sink.take()  # the central directory
