"""RegisterTune's file upload through the real gateway: bad metadata is refused before the file is read,
files past the bound are refused naming ``chunk``, a large file is stored byte for byte, and a replica
receives at most ``max_tune_uploads`` files at once (one more is RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    rpc_error,
    segmentation_models_fixture,
    stack_fixture,
)
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from multipass.grpc.errors import field_violations, reason_of
from multipass.v1 import jobs_pb2
from multipass_dev.sample_files import lora_safetensors
from multipass_gateway.settings import Limits

MiB = 1024 * 1024


lora_file = lora_safetensors


def lora_metadata(**fields) -> jobs_pb2.TuneMetadata:
    return jobs_pb2.TuneMetadata(**{"token": "ohwx", "class_name": "woman", "base_family": "sd15", **fields})


class Upload:
    """A RegisterTune request stream: the metadata, then ``data`` in chunks, counting the chunks gRPC pulls;
    with ``hold`` set, it stops after the first chunk until ``hold`` is released."""

    def __init__(
        self, metadata: jobs_pb2.TuneMetadata, data: bytes = b"", *, chunk: int = MiB, hold: bool = False
    ):
        self.metadata = metadata
        self.chunks = [data[start : start + chunk] for start in range(0, len(data), chunk)]
        self.pulled = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __aiter__(self):
        yield jobs_pb2.RegisterTuneRequest(metadata=self.metadata)
        for index, chunk in enumerate(self.chunks):
            if index == 1:
                await self.release.wait()
            self.pulled += 1
            yield jobs_pb2.RegisterTuneRequest(chunk=chunk)


async def repeated(metadata: jobs_pb2.TuneMetadata, chunk: bytes, count: int, pulled: list[int]):
    yield jobs_pb2.RegisterTuneRequest(metadata=metadata)
    for _ in range(count):
        pulled.append(len(chunk))
        yield jobs_pb2.RegisterTuneRequest(chunk=chunk)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_bad_metadata_is_refused_before_the_file_is_read(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    pulled: list[int] = []
    sent = 256  # MiB: the gateway reads (and drops) at most its drain bound after refusing
    error = await rpc_error(
        stack.tunes.RegisterTune(
            repeated(lora_metadata(token="O H"), b"\0" * MiB, sent, pulled), metadata=bearer(tenant.api_key)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(dict(field_violations(error))) == {"metadata.token"}
    # Before this change the gateway read every chunk (into memory) before judging the metadata.
    assert len(pulled) < sent // 2, f"the client sent {len(pulled)} of {sent} chunks"


async def test_a_chunk_after_a_url_is_refused_at_once(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    pulled: list[int] = []
    error = await rpc_error(
        stack.tunes.RegisterTune(
            repeated(lora_metadata(url="https://example.test/x.safetensors"), b"\0" * MiB, 256, pulled),
            metadata=bearer(tenant.api_key),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(field_violations(error)) == {"metadata.url": "give either a URL or file chunks, not both"}
    assert len(pulled) < 128


async def test_a_file_past_the_bound_is_refused_naming_chunk(stack):
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, max_tune_bytes=64 * 1024))
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    error = await rpc_error(
        stack.tunes.RegisterTune(
            Upload(lora_metadata(), lora_file(80 * 1024), chunk=16 * 1024), metadata=metadata
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(field_violations(error)) == {"chunk": f"file is larger than {64 * 1024} bytes"}
    assert not (await stack.tunes.ListTunes(jobs_pb2.ListTunesRequest(), metadata=metadata)).tunes
    # Just under the bound is fine.
    tune = await stack.tunes.RegisterTune(Upload(lora_metadata(), lora_file(60 * 1024)), metadata=metadata)
    assert tune.file.size < 64 * 1024


async def test_a_large_file_is_stored_byte_for_byte(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    data = lora_file(12 * MiB)  # past the spool's memory threshold, and more than one object-store part
    digest = hashlib.sha256(data).hexdigest()
    tune = await stack.tunes.RegisterTune(
        Upload(lora_metadata(sha256=digest.upper()), data), metadata=bearer(tenant.api_key)
    )
    assert (tune.file.sha256, tune.file.size) == (digest, len(data))
    assert tune.file.key == f"tunes/{tenant.tenant}/{tune.tune_id}/lora.safetensors"
    stored = await stack.store.get_bytes(tune.file.bucket, tune.file.key)
    assert hashlib.sha256(stored).hexdigest() == digest


async def test_one_upload_more_than_the_bound_is_resource_exhausted(stack):
    await stack.start_gateway(
        limits=Limits(fetch_timeout_seconds=5.0, max_tune_uploads=1, retry_after_seconds=3.0)
    )
    tunes = stack.gateway.components["tunes"]
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    data = lora_file(3 * MiB)
    first = Upload(lora_metadata(), data, hold=True)
    call = asyncio.ensure_future(stack.tunes.RegisterTune(first, metadata=metadata))
    await until(lambda: tunes.uploads.running == 1 and first.pulled == 1)

    busy = await rpc_error(stack.tunes.RegisterTune(Upload(lora_metadata(), data), metadata=metadata))
    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 tune file uploads are in progress" in busy.details() and "retry" in busy.details()
    assert reason_of(busy).metadata["scope"] == "tune_uploads" and reason_of(busy).metadata["limit"] == "1"
    (retry,) = [d for d in rpc_status.from_call(busy).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    retry.Unpack(info)
    assert info.retry_delay.seconds == 3
    # A URL is a file too: refused at once, before any fetch.
    by_url = await rpc_error(
        stack.tunes.RegisterTune(Upload(lora_metadata(url="http://127.0.0.1:1/x")), metadata=metadata)
    )
    assert by_url.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A faceid tune has no file: it does not wait for a slot.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "tan").save(buffer, "PNG")

    async def upload_parts():
        yield jobs_pb2.UploadImageRequest(filename="face.png")
        yield jobs_pb2.UploadImageRequest(chunk=buffer.getvalue())

    face = await stack.jobs.UploadImage(upload_parts(), metadata=metadata)
    faceid = jobs_pb2.TuneMetadata(
        token="ohwx", class_name="woman", kind="faceid", reference_image_ids=[face.image_id]
    )
    assert (await stack.tunes.RegisterTune(Upload(faceid), metadata=metadata)).kind == "faceid"

    first.release.set()
    tune = await call
    assert tune.file.sha256 == hashlib.sha256(data).hexdigest()
    assert tunes.uploads.running == 0
    again = await stack.tunes.RegisterTune(Upload(lora_metadata(), data), metadata=metadata)
    assert again.file.size == len(data)


async def test_a_cancelled_upload_frees_its_slot(stack):
    await stack.start_gateway(limits=Limits(fetch_timeout_seconds=5.0, max_tune_uploads=1))
    tunes = stack.gateway.components["tunes"]
    tenant = await stack.tenant()
    metadata = bearer(tenant.api_key)
    held = Upload(lora_metadata(), lora_file(2 * MiB), hold=True)
    call = stack.tunes.RegisterTune(held, metadata=metadata)
    await until(lambda: tunes.uploads.running == 1)
    call.cancel()
    await until(lambda: tunes.uploads.running == 0)
    tune = await stack.tunes.RegisterTune(Upload(lora_metadata(), lora_file(1024)), metadata=metadata)
    assert tune.file.size > 1024
