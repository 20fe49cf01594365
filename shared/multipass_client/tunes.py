"""Typed calls of the ``Tunes`` service: register (streamed file or URL), get, list, delete."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc

from multipass.v1 import jobs_pb2, jobs_pb2_grpc
from multipass_client.paging import pages

CHUNK_BYTES = 1024 * 1024
TUNE_KINDS = ("lora", "checkpoint")
BASE_FAMILIES = ("sd15", "sdxl")


class TunesClient:
    def __init__(self, channel: grpc.Channel, *, timeout: float = 120.0):
        self._stub = jobs_pb2_grpc.TunesStub(channel)
        self._timeout = max(timeout, 120.0)  # registering streams a whole LoRA

    def register(
        self,
        file: Path | bytes | None,
        *,
        token: str,
        class_name: str,
        base_family: str,
        kind: str = "lora",
        name: str = "",
        url: str = "",
        reference_image_ids: tuple[str, ...] = (),
        characteristics: Mapping[str, str] | None = None,
    ) -> jobs_pb2.Tune:
        """Register a LoRA or checkpoint from a local file (streamed in chunks, SHA-256 sent along) or a URL.

        ``reference_image_ids`` are ids of images uploaded with ``jobs.upload_image``: the person's reference
        faces, used by face swap and ``<faceid:...>``; with ``kind="faceid"`` they are the whole tune (no
        file: Astria's faceid tunes). ``characteristics`` are the texts prompts using the
        tune write as ``{{name}}`` (``{"eye_color": "green eyes"}``).
        """
        if kind == "faceid":
            if file is not None or url or not reference_image_ids:
                raise ValueError("a faceid tune has no file or URL, and needs reference_image_ids")
        elif (file is None) == (not url):
            raise ValueError("give exactly one of a file and a URL")
        data = file.read_bytes() if isinstance(file, Path) else file
        if isinstance(file, Path) and not name:
            name = file.stem
        metadata = jobs_pb2.TuneMetadata(
            name=name,
            token=token,
            class_name=class_name,
            base_family=base_family,
            kind=kind,
            url=url,
            sha256=hashlib.sha256(data).hexdigest() if data is not None else "",
            reference_image_ids=list(reference_image_ids),
            characteristics=dict(characteristics or {}),
        )

        def parts() -> Iterator[jobs_pb2.RegisterTuneRequest]:
            yield jobs_pb2.RegisterTuneRequest(metadata=metadata)
            if data is not None:
                for start in range(0, len(data), CHUNK_BYTES):
                    yield jobs_pb2.RegisterTuneRequest(chunk=data[start : start + CHUNK_BYTES])

        return self._stub.RegisterTune(parts(), timeout=self._timeout)

    def get(self, tune_id: str) -> jobs_pb2.Tune:
        return self._stub.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune_id), timeout=self._timeout)

    def list(self, *, page_size: int = 50) -> Iterator[jobs_pb2.Tune]:
        for page in pages(
            lambda token: self._stub.ListTunes(
                jobs_pb2.ListTunesRequest(page_size=page_size, page_token=token), timeout=self._timeout
            )
        ):
            yield from page.tunes

    def delete(self, tune_id: str) -> jobs_pb2.DeleteTuneResponse:
        return self._stub.DeleteTune(jobs_pb2.DeleteTuneRequest(tune_id=tune_id), timeout=self._timeout)

    def update(
        self,
        tune_id: str,
        *,
        name: str | None = None,
        class_name: str | None = None,
        characteristics: Mapping[str, str] | None = None,
    ) -> jobs_pb2.Tune:
        """Change the given fields (``characteristics`` replaces them all; ``{}`` clears them)."""
        request = jobs_pb2.UpdateTuneRequest(tune_id=tune_id)
        for field, value in (("name", name), ("class_name", class_name)):
            if value is not None:
                setattr(request, field, value)
                request.update_mask.paths.append(field)
        if characteristics is not None:
            request.characteristics.update(characteristics)
            request.update_mask.paths.append("characteristics")
        return self._stub.UpdateTune(request, timeout=self._timeout)
