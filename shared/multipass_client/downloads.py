"""Downloading a job's results: every pass output, every mask, the final image and a contact sheet.

Layout under ``<out>/<job_id>/``::

    job.json                      the Job, proto3 JSON with proto field names
    image-<k>/00-base.png         pass outputs in chain order: <index from base>-<pass name>.png
    image-<k>/mask-person-0.png   masks by name
    image-<k>/final.png           the image's final (the output of its last pass, ``OutputImage.final``)
    image-<k>/contact-sheet.png   base → masks → person passes → later passes → final

Pass outputs and masks are read from the object store (the job only carries their bucket and key); the
final image falls back to its presigned URL when no object-store reader is configured.
"""

from __future__ import annotations

import io
import logging
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from google.protobuf import json_format
from PIL import Image

from multipass.v1 import common_pb2, jobs_pb2
from multipass_client.contact_sheet import pass_sections, render_contact_sheet

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ObjectReader(Protocol):
    def read(self, bucket: str, key: str) -> bytes: ...


class S3Reader:
    """Reads objects from S3/MinIO with the ``minio`` client."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
    ):
        from minio import Minio

        self.endpoint = endpoint
        self._client = Minio(
            endpoint=endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )

    def read(self, bucket: str, key: str) -> bytes:
        response = self._client.get_object(bucket_name=bucket, object_name=key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


def s3_reader_for(state: Mapping | None, environ: Mapping[str, str] | None = None) -> S3Reader | None:
    """A reader for the local stack's object store (``stack.json``), else for ``MULTIPASS_S3_*``, else None."""
    environ = os.environ if environ is None else environ
    s3 = (state or {}).get("s3") or {}
    if s3.get("endpoint"):
        return S3Reader(
            s3["endpoint"],
            s3.get("access_key", ""),
            s3.get("secret_key", ""),
            secure=bool(s3.get("secure")),
            region=s3.get("region") or "us-east-1",
        )
    endpoint = environ.get("MULTIPASS_S3_ENDPOINT")
    if endpoint:
        return S3Reader(
            endpoint,
            environ.get("MULTIPASS_S3_ACCESS_KEY", "multipass"),
            environ.get("MULTIPASS_S3_SECRET_KEY", "multipass-secret"),
            secure=environ.get("MULTIPASS_S3_SECURE", "false").lower() in ("1", "true", "yes", "on"),
            region=environ.get("MULTIPASS_S3_REGION", "us-east-1"),
        )
    return None


@dataclass
class DownloadedImage:
    index: int
    directory: Path
    passes: list[Path] = field(default_factory=list)
    masks: dict[str, Path] = field(default_factory=dict)
    final: Path | None = None
    contact_sheet: Path | None = None


@dataclass
class DownloadedJob:
    directory: Path
    job_json: Path
    images: list[DownloadedImage] = field(default_factory=list)
    #: Objects that could not be fetched: "image-0/02-person-0.png: <reason>".
    missing: list[str] = field(default_factory=list)


def job_to_json(job: jobs_pb2.Job) -> str:
    return json_format.MessageToJson(job, preserving_proto_field_name=True, indent=2, sort_keys=True)


def safe_name(name: str) -> str:
    """A pass or mask name usable as a file name component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def _as_png(data: bytes) -> bytes:
    if data.startswith(PNG_MAGIC):
        return data
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the gateway's presigned URL
        return response.read()


def generation_chain(image: jobs_pb2.OutputImage) -> list[jobs_pb2.PassState]:
    """The image's passes from ``base`` on: the gateway's ``prepare`` step produces no image of its own,
    so ``base`` is pass 00, ``segment`` 01, ``person-0`` 02, ..."""
    return [state for state in image.passes if state.kind != "prepare" and state.name != "prepare"]


def download_job(
    job: jobs_pb2.Job,
    out_dir: Path,
    reader: ObjectReader | None,
    *,
    contact_sheet: bool = True,
) -> DownloadedJob:
    """Write the job's JSON, outputs, masks, finals and contact sheets under ``out_dir/<job_id>/``."""
    directory = Path(out_dir).resolve() / job.job_id
    directory.mkdir(parents=True, exist_ok=True)
    job_json = directory / "job.json"
    job_json.write_text(job_to_json(job) + "\n", encoding="utf-8")
    result = DownloadedJob(directory=directory, job_json=job_json)

    def fetch(ref: common_pb2.ImageRef, target: Path, url: str = "") -> Path | None:
        label = f"{target.parent.name}/{target.name}"
        errors = []
        if reader is not None and ref.key:
            try:
                target.write_bytes(_as_png(reader.read(ref.bucket, ref.key)))
                return target
            except Exception as error:  # noqa: BLE001 - report what is missing, keep the rest
                errors.append(f"{ref.bucket}/{ref.key}: {error}")
        if url:
            try:
                target.write_bytes(_as_png(_fetch_url(url)))
                return target
            except Exception as error:  # noqa: BLE001
                errors.append(f"{url.split('?', 1)[0]}: {error}")
        if not errors:
            errors.append("no object-store access configured (MULTIPASS_S3_* or a local stack)")
        result.missing.append(f"{label}: {'; '.join(errors)}")
        return None

    for image in job.images:
        image_dir = directory / f"image-{image.index}"
        image_dir.mkdir(exist_ok=True)
        downloaded = DownloadedImage(index=image.index, directory=image_dir)
        seen: set[tuple[str, str]] = set()
        for position, state in enumerate(generation_chain(image)):
            ref = state.output
            if not ref.key or (ref.bucket, ref.key) in seen:
                continue  # no image of its own (segment: its masks follow), or its input handed on unchanged
            seen.add((ref.bucket, ref.key))
            path = fetch(ref, image_dir / f"{position:02d}-{safe_name(state.name)}.png")
            if path is not None:
                downloaded.passes.append(path)
        for name in sorted(image.masks):
            path = fetch(image.masks[name], image_dir / f"mask-{safe_name(name)}.png")
            if path is not None:
                downloaded.masks[name] = path
        if image.final.key or image.url:
            downloaded.final = fetch(image.final, image_dir / "final.png", image.url)
        if contact_sheet and (downloaded.passes or downloaded.masks or downloaded.final):
            downloaded.contact_sheet = write_contact_sheet(downloaded)
        result.images.append(downloaded)
    return result


def write_contact_sheet(downloaded: DownloadedImage) -> Path:
    """Render ``contact-sheet.png`` from the files of one downloaded image."""

    def load(path: Path) -> Image.Image:
        with Image.open(path) as image:
            image.load()
            return image.copy()

    passes = [(path.stem.split("-", 1)[1], load(path)) for path in downloaded.passes]
    masks = {name: load(path) for name, path in downloaded.masks.items()}
    final = load(downloaded.final) if downloaded.final else None
    sheet = render_contact_sheet(pass_sections(passes, masks, final))
    target = downloaded.directory / "contact-sheet.png"
    sheet.save(target, format="PNG")
    return target
