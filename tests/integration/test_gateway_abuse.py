"""Abuse through the public API of the real gateway: hostile images (upload and URL), URLs aimed inside the
network (literals, DNS answers, redirects, rebinding, odd schemes), one tenant reaching for another's
jobs, tunes, uploads, objects and idempotency keys, revoked keys across replicas, and the request limits
reported with the field they concern. The fake worker of gateway_support runs the passes."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from gateway_support import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    Stack,
    bearer,
    capabilities_fixture,
    register_tune,
    safetensors_bytes,
    segmentation_models_fixture,
    stack_fixture,
    wait_for_job,
)
from PIL import Image

from multipass.grpc.errors import field_violations, reason_of
from multipass.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from multipass_gateway.infra.fetch import FetchError
from multipass_gateway.main import serve as serve_gateway
from multipass_gateway.settings import FetchAllowList, Limits

pytestmark = pytest.mark.timeout(120)
MAX_PIXELS = 1024 * 1024
FAST = {"steps": "1", "w": "256", "h": "256"}


# --- hostile images ------------------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header declaring width x height over a few hundred bytes of zlib (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # the first rows only: the bytes stay tiny
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """A 300x200 landscape JPEG whose EXIF orientation (6: rotate 90 degrees) makes it 200x300 upright."""
    image = Image.new("RGB", (300, 200), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 150, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif.tobytes())


REFUSED = {
    "truncated png": (encoded(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "damaged or truncated"),
    "text named .png": (b"hello, I am not a picture\n" * 4, "is not an image"),
    "html named .jpg": (b"<html><body>not an image</body></html>", "is not an image"),
    "decompression bomb": (bomb_png(60000, 60000), "decompression bomb"),
    "bomb under pillow's own limit": (bomb_png(8000, 8000), "pixels; at most"),
    "huge dimensions": (encoded(Image.new("L", (2048, 1024)), "PNG"), "2048x1024"),
    "truncated jpeg": (encoded(Image.new("RGB", (64, 64), "blue"), "JPEG")[:200], "damaged or truncated"),
}
NORMALISED = {
    "cmyk jpeg": (encoded(Image.new("CMYK", (96, 64), (0, 255, 255, 0)), "JPEG"), (96, 64)),
    "16-bit png": (encoded(Image.fromarray(np.full((64, 96), 40000, dtype=np.uint16)), "PNG"), (96, 64)),
    "rgba png": (encoded(Image.new("RGBA", (96, 64), (10, 20, 30, 0)), "PNG"), (96, 64)),
    "palette png with transparency": (
        encoded(Image.new("P", (96, 64), 3), "PNG", transparency=3),
        (96, 64),
    ),
    "exif-rotated jpeg": (exif_rotated_jpeg(), (200, 300)),
}


class Files:
    """A loopback HTTP server serving bytes by path (allow-listed for these tests only)."""

    def __init__(
        self, files: dict[str, bytes], redirects: dict[str, str] | None = None, *, host: str = "127.0.0.1"
    ):
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.requests.append(self.path)
                if self.path in (redirects or {}):
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def do_POST(self):  # noqa: N802
                owner.requests.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "images.test") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Resolver:
    """DNS as the tests script it: each host's answers in turn (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int):
        self.calls.append(host)
        if host not in self.answers:
            raise FetchError(f"host {host} does not resolve", permanent=True)
        sequence = self.answers[host]
        answer = sequence[min(self.calls.count(host), len(sequence)) - 1]
        return [ipaddress.ip_address(a) for a in answer]


async def start(stack: Stack, resolver: Resolver, **overrides) -> None:
    stack.gateway = await serve_gateway(stack.settings(**overrides), resolver=resolver)
    stack.channel = grpc.aio.insecure_channel(stack.gateway.address)


async def upload(stack: Stack, key: str, data: bytes):
    """Stream ``data`` like a client that stops writing once the server has answered.

    The gateway refuses an oversized or hostile upload before the client finished sending; with a request
    iterator grpc.aio may then report the failed send (INTERNAL) instead of the server's status, so the
    chunks are written one by one and the call's own status is what the caller sees.
    """
    call = stack.jobs.UploadImage(metadata=bearer(key))
    try:
        await call.write(jobs_pb2.UploadImageRequest(filename="photo.png"))
        for offset in range(0, max(len(data), 1), 32 * 1024):
            await call.write(jobs_pb2.UploadImageRequest(chunk=data[offset : offset + 32 * 1024]))
        await call.done_writing()
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        pass  # the server ended the call early; awaiting it below gives its status
    return await call


async def refused(call, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return dict(field_violations(caught.value))


async def missing(call) -> dict[str, str]:
    """The field violations of a NOT_FOUND answer (a reference to something the caller does not have)."""
    return await refused(call, grpc.StatusCode.NOT_FOUND)


async def test_hostile_images_are_refused_and_odd_ones_normalised_by_upload_and_by_url(stack):
    files = {f"/{name.replace(' ', '-')}.png": data for name, (data, _) in {**REFUSED, **NORMALISED}.items()}
    files["/large.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * (600 * 1024)
    server = Files(files)
    resolver = Resolver({"images.test": [["127.0.0.1"]]})
    limits = Limits(fetch_timeout_seconds=5.0, max_image_pixels=MAX_PIXELS, max_image_bytes=512 * 1024)
    await start(stack, resolver, limits=limits, fetch_allow=FetchAllowList(hosts=frozenset({"images.test"})))
    tenant = await stack.tenant()
    try:
        for name, (data, reason) in REFUSED.items():
            found = await refused(upload(stack, tenant.api_key, data))
            assert reason in found["chunk"], (name, found)
            url = server.url(f"/{name.replace(' ', '-')}.png")
            found = await refused(
                stack.jobs.SubmitJob(
                    jobs_pb2.SubmitJobRequest(prompt="a cat", params={**FAST, "input_image_url": url}),
                    metadata=bearer(tenant.api_key),
                )
            )
            assert reason in found["params.input_image_url"], (name, found)
        assert "no image data" in (await refused(upload(stack, tenant.api_key, b"")))["chunk"]
        # Too many pixels or bytes, uploaded or fetched: one reason a client can branch on.
        too_large = {
            "pixels, uploaded": upload(stack, tenant.api_key, REFUSED["huge dimensions"][0]),
            "bytes, uploaded": upload(stack, tenant.api_key, files["/large.png"]),
        }
        for path in ("/huge-dimensions.png", "/large.png"):
            too_large[f"{path}, fetched"] = stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(
                    prompt="a cat", params={**FAST, "input_image_url": server.url(path)}
                ),
                metadata=bearer(tenant.api_key),
            )
        for name, call in too_large.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, caught.value.details())
            assert reason_of(caught.value).reason == "IMAGE_TOO_LARGE", (name, caught.value.details())

        jobs = []
        for name, (data, size) in NORMALISED.items():
            uploaded = await upload(stack, tenant.api_key, data)
            assert (uploaded.image.width, uploaded.image.height) == size, name
            stored = await stack.store.get_image(uploaded.image)
            assert stored.mode == "RGB" and stored.size == size, name
            # No w/h: the scene takes the input's aspect ratio, so an upright portrait stays one.
            by_id = jobs_pb2.SubmitJobRequest(
                prompt="a cat", params={"steps": "1"}, input_image_id=uploaded.image_id
            )
            url = server.url(f"/{name.replace(' ', '-')}.png")
            by_url = jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "1", "input_image_url": url})
            for request in (by_id, by_url):
                jobs.append(
                    (name, (await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))).job_id)
                )
        for name, job_id in jobs:
            job = await wait_for_job(stack, job_id, tenant.api_key)
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, (name, job.error.message)
            source = job.images[0].passes[0].output
            if name == "exif-rotated jpeg":
                assert source.height > source.width  # upright, as the camera meant it
    finally:
        server.close()
    # The upload itself is capped too, before anything is decoded.
    big = await refused(upload(stack, tenant.api_key, b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024)))
    assert "larger than" in big["chunk"]


# --- URLs aimed inside the network ------------------------------------------------------------------------------


INSIDE = [
    "http://127.0.0.1/x.png",
    "http://10.1.2.3/x.png",
    "http://192.168.0.10/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://[::ffff:a9fe:a9fe]/x.png",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://2130706433/x.png",
    "http://0x7f.1/x.png",
    "http://017700000001/x.png",
    "http://private.test/x.png",
    "http://metadata.test/latest/meta-data/",
    "http://mapped.test/x.png",
    "http://linklocal6.test/x.png",
    "http://mixed.test/x.png",
    "file:///etc/passwd",
    "gopher://images.test:70/_GET",
    "ftp://images.test/x.png",
    "dict://images.test:11211/stat",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://user:secret@images.test/x.png",
]
ANSWERS = {
    "private.test": [["10.0.0.7"]],
    "metadata.test": [["169.254.169.254"]],
    "mapped.test": [["::ffff:10.0.0.7"]],
    "linklocal6.test": [["fe80::1"]],
    "mixed.test": [["93.184.216.34", "192.168.1.20"]],
}


async def test_urls_aimed_inside_the_network_are_refused_for_every_field_that_takes_one(stack):
    resolver = Resolver(ANSWERS)
    await start(stack, resolver)
    tenant = await stack.tenant()
    for url in INSIDE:
        for field, request in (
            (
                "params.input_image_url",
                jobs_pb2.SubmitJobRequest(prompt="a cat", params={"input_image_url": url}),
            ),
            (
                "params.mask_image_url",
                jobs_pb2.SubmitJobRequest(prompt="a cat", params={"mask_image_url": url}),
            ),
            ("callback_url", jobs_pb2.SubmitJobRequest(prompt="a cat", callback_url=url)),
        ):
            found = await refused(stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key)))
            assert field in found, (url, field, found)

        async def tune_from(url: str = url):
            yield jobs_pb2.RegisterTuneRequest(
                metadata=jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family="sd15", url=url)
            )

        found = await refused(stack.tunes.RegisterTune(tune_from(), metadata=bearer(tenant.api_key)))
        assert "metadata.url" in found, (url, found)
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(tenant.api_key))).jobs


async def test_redirects_and_dns_rebinding_cannot_lead_a_fetch_or_a_callback_inside(stack):
    image = encoded(Image.new("RGB", (300, 300), "green"), "PNG")
    server = Files(
        {"/ok.png": image},
        redirects={
            "/to-private": "http://10.9.8.7/x.png",
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-file": "file:///etc/passwd",
            "/to-loopback-name": "http://localhost.test/x.png",
            "/hop": "/ok.png",
        },
        host="127.0.0.2",
    )
    resolver = Resolver(
        {
            "images.test": [["127.0.0.2"]],
            "localhost.test": [["127.0.0.1"]],
            # Public (here: the allow-listed 127.0.0.2) for the check, then private for the connection.
            "rebind.test": [["127.0.0.2"], ["10.0.0.7"]],
            "hooks.test": [["127.0.0.2"], ["169.254.169.254"]],
            "steady-hooks.test": [["127.0.0.2"]],
        }
    )
    allow = FetchAllowList(networks=(ipaddress.ip_network("127.0.0.2/32"),))
    await start(stack, resolver, fetch_allow=allow)
    tenant = await stack.tenant()
    try:
        for path, reason in (
            ("/to-private", "10.9.8.7"),
            ("/to-metadata", "169.254.169.254"),
            ("/to-file", "scheme"),
            ("/to-loopback-name", "127.0.0.1"),
        ):
            params = {**FAST, "input_image_url": server.url(path)}
            found = await refused(
                stack.jobs.SubmitJob(
                    jobs_pb2.SubmitJobRequest(prompt="a cat", params=params), metadata=bearer(tenant.api_key)
                )
            )
            assert reason in found["params.input_image_url"], (path, found)
        # Rebinding between two hops: the second resolution is checked again, and refused.
        params = {**FAST, "input_image_url": server.url("/hop", host="rebind.test")}
        found = await refused(
            stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(prompt="a cat", params=params), metadata=bearer(tenant.api_key)
            )
        )
        assert "10.0.0.7" in found["params.input_image_url"]
        assert server.requests.count("/ok.png") == 0
        # A callback host that passed at submit but resolves to the metadata endpoint at delivery.
        hooked = {}
        for host in ("hooks.test", "steady-hooks.test"):
            request = jobs_pb2.SubmitJobRequest(
                prompt="a cat", params=FAST, callback_url=server.url("/hook", host)
            )
            hooked[host] = (await stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key))).job_id
        outcomes = {}
        for host, job_id in hooked.items():
            await wait_for_job(stack, job_id, tenant.api_key)
            for _ in range(100):
                job = await stack.jobs.GetJob(
                    jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(tenant.api_key)
                )
                if job.callback_outcome:
                    break
                await asyncio.sleep(0.1)
            outcomes[host] = job.callback_outcome
        assert outcomes["hooks.test"].startswith("failed after 1 attempts")
        assert "169.254.169.254" in outcomes["hooks.test"] and "metadata" in outcomes["hooks.test"]
        assert outcomes["steady-hooks.test"].startswith("delivered (HTTP 200")
        assert server.requests.count("POST /hook") == 1  # only the steady host's callback arrived
    finally:
        server.close()


# --- tenancy ------------------------------------------------------------------------------------------------------


async def test_one_tenant_cannot_reach_anything_of_another(stack):
    resolver = Resolver({})
    await start(stack, resolver)
    owner, intruder = await stack.tenant("owner"), await stack.tenant("intruder")
    mine, theirs = bearer(owner.api_key), bearer(intruder.api_key)
    uploaded = await upload(stack, owner.api_key, encoded(Image.new("RGB", (64, 64), "red"), "PNG"))
    tune = await register_tune(stack, owner.api_key)
    submitted = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(
            prompt="a cat", params=FAST, input_image_id=uploaded.image_id, idempotency_key="k-1"
        ),
        metadata=mine,
    )
    job = await wait_for_job(stack, submitted.job_id, owner.api_key)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED

    # Everything the owner's job points at lives under the owner's prefix, presigned URLs included.
    refs = [p.output for image in job.images for p in image.passes if p.output.key] + [job.images[0].final]
    assert refs and all(ref.key.startswith(f"jobs/{owner.tenant}/{job.job_id}/") for ref in refs)
    assert f"/jobs/{owner.tenant}/{job.job_id}/" in job.images[0].url
    assert uploaded.image.key == f"uploads/{owner.tenant}/{uploaded.image_id}.png"
    assert tune.file.key.startswith(f"tunes/{owner.tenant}/{tune.tune_id}/")

    async def code(call) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value.code()

    async def drain(call):
        return [event async for event in call]

    hidden = {
        "GetJob": stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=theirs),
        "WatchJob": drain(stack.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id), metadata=theirs)),
        "CancelJob": stack.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id), metadata=theirs),
        "DeleteJob": stack.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.job_id), metadata=theirs),
        "GetTune": stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=theirs),
        "DeleteTune": stack.tunes.DeleteTune(
            jobs_pb2.DeleteTuneRequest(tune_id=tune.tune_id), metadata=theirs
        ),
    }
    for name, call in hidden.items():
        assert await code(call) == grpc.StatusCode.NOT_FOUND, name
    assert not (await stack.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=theirs)).jobs
    assert not (await stack.tunes.ListTunes(jobs_pb2.ListTunesRequest(), metadata=theirs)).tunes
    # Using the owner's upload, tune or reference images reads as "does not exist" (NOT_FOUND) for the intruder.
    found = await missing(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt="a cat", params=FAST, input_image_id=uploaded.image_id),
            metadata=theirs,
        )
    )
    assert found == {"input_image_id": f"no uploaded image {uploaded.image_id!r}"}
    found = await missing(
        stack.jobs.SubmitJob(
            jobs_pb2.SubmitJobRequest(prompt=f"a room BREAK BREAK ohwx woman <lora:{tune.tune_id}:1>"),
            metadata=theirs,
        )
    )
    assert found == {f"<lora:{tune.tune_id}:1>": f"tune {tune.tune_id!r} does not exist"}

    async def with_references():
        yield jobs_pb2.RegisterTuneRequest(
            metadata=jobs_pb2.TuneMetadata(
                token="ohwx", class_name="woman", base_family="sd15", reference_image_ids=[uploaded.image_id]
            )
        )
        yield jobs_pb2.RegisterTuneRequest(chunk=safetensors_bytes())

    found = await missing(stack.tunes.RegisterTune(with_references(), metadata=theirs))
    assert any(uploaded.image_id in text for text in found.values()), found
    # The same idempotency key is the intruder's own: a new job, not the owner's.
    again = await stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(prompt="a cat", params=FAST, idempotency_key="k-1"), metadata=theirs
    )
    assert not again.existing and again.job_id != job.job_id
    # Ids that try to step outside the tenant's key space are refused as malformed.
    for bad in ("../" + job.job_id, f"{owner.tenant}.{job.job_id}", "*", ">", job.job_id + ".x"):
        request = jobs_pb2.GetJobRequest(job_id=bad)
        assert await code(stack.jobs.GetJob(request, metadata=theirs)) == grpc.StatusCode.INVALID_ARGUMENT
    # The owner's things are untouched.
    assert (await stack.tunes.GetTune(jobs_pb2.GetTuneRequest(tune_id=tune.tune_id), metadata=mine)).tune_id
    assert (
        await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id), metadata=mine)
    ).state == job.state


async def test_a_revoked_key_stops_at_once_on_every_gateway_replica(stack):
    resolver = Resolver({})
    await start(stack, resolver)
    second = await serve_gateway(stack.settings(), resolver=resolver)
    try:
        tenant = await stack.tenant()
        admin = [("x-multipass-admin-token", ADMIN_TOKEN)]
        async with grpc.aio.insecure_channel(second.address) as channel:
            other_jobs = jobs_pb2_grpc.JobsStub(channel)
            request = jobs_pb2.ListJobsRequest()
            await other_jobs.ListJobs(request, metadata=bearer(tenant.api_key))  # works on both replicas
            revoked = await admin_pb2_grpc.AdminStub(channel).RevokeKey(
                admin_pb2.RevokeKeyRequest(key_id=tenant.key_id), metadata=admin
            )
            assert revoked.revoked
            for jobs in (stack.jobs, other_jobs):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await jobs.ListJobs(request, metadata=bearer(tenant.api_key))
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await second.stop(grace=0.5)


# --- limits -------------------------------------------------------------------------------------------------------


async def test_every_request_limit_is_enforced_and_names_its_field(stack):
    await start(stack, Resolver({}))
    tenant = await stack.tenant()

    async def violations(prompt: str, **params: str) -> dict[str, str]:
        return await refused(
            stack.jobs.SubmitJob(
                jobs_pb2.SubmitJobRequest(prompt=prompt, params=params), metadata=bearer(tenant.api_key)
            )
        )

    assert "4000" in " ".join((await violations("a" * 4001)).values())
    nine = "a hall BREAK BREAK " + " BREAK ".join(f"person {i}" for i in range(9))
    assert "at most 8" in " ".join((await violations(nine)).values())
    assert "params.steps" in await violations("a cat", steps="51")
    assert "params.num_images" in await violations("a cat", num_images="9")
    assert "params.w" in await violations("a cat", w="99999")
    assert "params.h" in await violations("a cat", h="100")
    assert "params.cfg_scale" in await violations("a cat", cfg_scale="16")
    assert "params.input_image_url" in await violations(
        "a cat", input_image_url="http://x.test/" + "a" * 2100
    )
