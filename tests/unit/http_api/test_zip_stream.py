"""The job archive is streamed: each image read, written and sent before the next is read."""

from __future__ import annotations

import io
import zipfile

import pytest

from multipass.v1 import common_pb2, jobs_pb2
from multipass_http_api.routes.files import _zip_stream


class CountingStore:
    """Serves objects by key, and records the most bytes handed out and not yet sent on."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.reads: list[str] = []

    async def get_bytes(self, bucket: str, key: str, field: str = "") -> bytes:
        self.reads.append(key)
        return self.objects[key]


@pytest.mark.asyncio
async def test_the_archive_is_sent_one_image_at_a_time_and_is_a_whole_zip():
    job = jobs_pb2.Job(job_id="j1")
    image = job.images.add(index=0)
    objects = {}
    for number, name in enumerate(("base", "person-0", "person-1")):
        key = f"jobs/t/j1/image-0/{name}.png"
        objects[key] = bytes([number]) * 200_000
        image.passes.add(name=name, output=common_pb2.ImageRef(bucket="b", key=key))
    image.final.CopyFrom(image.passes[-1].output)
    store = CountingStore(objects)
    chunks, reads_when_sent = [], []
    async for chunk in _zip_stream(job, "http://h", store):
        chunks.append(chunk)
        reads_when_sent.append(len(store.reads))
    # job.json, each of the four files as soon as it was read, then the central directory
    assert reads_when_sent == [0, 1, 2, 3, 4, 4]
    assert max(len(chunk) for chunk in chunks) < 200_000 + 1_000
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [
            "job.json",
            "image-0/base.png",
            "image-0/person-0.png",
            "image-0/person-1.png",
            "image-0/final.png",
        ]
        assert archive.read("image-0/person-0.png") == objects["jobs/t/j1/image-0/person-0.png"]
