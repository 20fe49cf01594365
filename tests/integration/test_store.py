"""The object store against a real S3 endpoint (moto server) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import urllib.request
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from multipass.connections import S3Settings
from multipass.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from multipass.names import BUCKET_JOBS, BUCKET_MODELS, BUCKET_TUNES
from multipass.store import ObjectStore, PublicEndpoint
from multipass.v1 import common_pb2
from multipass_dev.local import S3ServerProcess

KEY = "jobs/t1/J1/image-0/base.png"


async def test_put_and_get_bytes_with_sha256_and_size(store):
    data = b"\x00\x01 lora weights \xff" * 100
    ref = await store.put_bytes(BUCKET_TUNES, "tunes/t1/7/model.safetensors", data)
    assert ref == common_pb2.ObjectRef(
        bucket=BUCKET_TUNES,
        key="tunes/t1/7/model.safetensors",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
    assert await store.get_bytes(BUCKET_TUNES, ref.key) == data
    info = await store.stat(BUCKET_TUNES, ref.key)
    assert (info.size, info.content_type) == (len(data), "application/octet-stream")


async def test_put_image_and_get_image_round_trip(store):
    pixels = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    ref = await store.put_image(BUCKET_JOBS, KEY, Image.fromarray(pixels, "RGB"))
    assert (ref.bucket, ref.key, ref.width, ref.height, ref.content_type) == (
        BUCKET_JOBS,
        KEY,
        40,
        24,
        "image/png",
    )
    stored = await store.get_bytes(BUCKET_JOBS, KEY)
    assert ref.sha256 == hashlib.sha256(stored).hexdigest() and ref.size == len(stored)
    image = await store.get_image(ref)
    assert np.array_equal(np.asarray(image), pixels)
    assert (await store.stat(BUCKET_JOBS, KEY)).content_type == "image/png"


async def test_get_image_refuses_a_non_image_naming_the_field(store):
    await store.put_bytes(BUCKET_JOBS, "uploads/t1/x.png", b"not an image at all")
    ref = common_pb2.ImageRef(bucket=BUCKET_JOBS, key="uploads/t1/x.png")
    with pytest.raises(InvalidInput) as caught:
        await store.get_image(ref, field="input_image")
    assert caught.value.violations[0].field == "input_image"


async def test_missing_object_and_bucket_are_not_found_by_name(store):
    with pytest.raises(NotFound) as caught:
        await store.get_bytes(BUCKET_JOBS, "jobs/t1/nope.png")
    assert "multipass-jobs/jobs/t1/nope.png" in str(caught.value)
    with pytest.raises(NotFound, match="nope-bucket"):
        await store.get_bytes("nope-bucket", "k")
    with pytest.raises(NotFound):
        await store.stat(BUCKET_JOBS, "jobs/t1/nope.png")
    assert not await store.exists(BUCKET_JOBS, "jobs/t1/nope.png")


async def test_max_bytes_refuses_larger_objects(store):
    await store.put_bytes(BUCKET_JOBS, "big.bin", b"x" * 1000)
    with pytest.raises(InvalidInput) as caught:
        await store.get_bytes(BUCKET_JOBS, "big.bin", max_bytes=999, field="input_image")
    violation = caught.value.violations[0]
    assert violation.field == "input_image"
    assert "1000 bytes" in violation.description and "999" in violation.description
    assert await store.get_bytes(BUCKET_JOBS, "big.bin", max_bytes=1000) == b"x" * 1000


async def test_presigned_url_is_fetchable_over_loopback(store):
    await store.put_bytes(BUCKET_JOBS, KEY, b"final image bytes", content_type="image/png")
    url = await store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=300)
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body == b"final image bytes"
    with pytest.raises(InvalidInput):
        await store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=8 * 24 * 3600)


def sigv4_presign_signature(url: str, *, host: str, secret_key: str) -> str:
    """The SigV4 signature an S3 server computes for a presigned GET ``url`` that reached it as ``host``."""
    parts = urlsplit(url)
    pairs = sorted(
        p.partition("=")[::2] for p in parts.query.split("&") if not p.startswith("X-Amz-Signature=")
    )
    fields = dict(pairs)
    amz_date = fields["X-Amz-Date"]
    _access_key, day, region, service, _terminator = unquote(fields["X-Amz-Credential"]).split("/")
    canonical = "\n".join(
        [
            "GET",
            parts.path,
            "&".join(f"{k}={v}" for k, v in pairs),
            f"host:{host}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


async def test_presigned_urls_carry_the_public_endpoint_and_still_download(store, s3_settings):
    port = s3_settings.endpoint.rpartition(":")[2]
    public = PublicEndpoint.parse(f"http://localhost:{port}")
    public_store = ObjectStore.from_settings(s3_settings, public_endpoint=public)
    await public_store.put_bytes(BUCKET_JOBS, KEY, b"final image bytes", content_type="image/png")
    url = await public_store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=300)
    assert url.startswith(f"http://localhost:{port}/{BUCKET_JOBS}/")
    # Signed for the host clients send (the signature covers it), not the internal one.
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    secret = s3_settings.secret_key
    assert signature == sigv4_presign_signature(url, host=f"localhost:{port}", secret_key=secret)
    assert signature != sigv4_presign_signature(url, host=s3_settings.endpoint, secret_key=secret)
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body == b"final image bytes"
    # Reads and writes still go to the internal endpoint.
    assert await store.get_bytes(BUCKET_JOBS, KEY) == b"final image bytes"


async def test_presigning_for_an_unreachable_public_endpoint_needs_no_network(s3_settings):
    public = PublicEndpoint.parse("https://downloads.example.invalid:9443")
    public_store = ObjectStore.from_settings(s3_settings, public_endpoint=public)
    began = time.monotonic()
    url = await public_store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=60)
    assert time.monotonic() - began < 1.0
    assert url.startswith(f"https://downloads.example.invalid:9443/{BUCKET_JOBS}/{KEY}?")
    assert f"%2F{s3_settings.region}%2Fs3%2F" in url


async def test_list_exists_delete_and_delete_prefix(store):
    for name in ("a.png", "b.png", "sub/c.png"):
        await store.put_bytes(BUCKET_JOBS, f"jobs/t1/J1/{name}", b"1")
    await store.put_bytes(BUCKET_JOBS, "jobs/t1/J2/a.png", b"2")
    assert await store.list_keys(BUCKET_JOBS, "jobs/t1/J1/") == [
        "jobs/t1/J1/a.png",
        "jobs/t1/J1/b.png",
        "jobs/t1/J1/sub/c.png",
    ]
    assert await store.exists(BUCKET_JOBS, "jobs/t1/J1/a.png")
    await store.delete(BUCKET_JOBS, "jobs/t1/J1/a.png")
    await store.delete(BUCKET_JOBS, "jobs/t1/J1/a.png")  # deleting twice is fine
    assert not await store.exists(BUCKET_JOBS, "jobs/t1/J1/a.png")
    assert await store.delete_prefix(BUCKET_JOBS, "jobs/t1/J1/") == 2
    assert await store.list_keys(BUCKET_JOBS) == ["jobs/t1/J2/a.png"]
    with pytest.raises(InvalidInput):
        await store.delete_prefix(BUCKET_JOBS, "")


async def test_ensure_buckets_is_idempotent(store):
    await asyncio.gather(
        *(store.ensure_buckets([BUCKET_JOBS, BUCKET_TUNES, BUCKET_MODELS, "extra"]) for _ in range(3))
    )
    assert await store.list_keys("extra") == []


async def test_fetch_to_cache_verifies_and_reuses(store, tmp_path):
    data = b"safetensors-ish payload" * 50
    ref = await store.put_bytes(BUCKET_TUNES, "tunes/t1/7/pytorch_lora_weights.safetensors", data)
    cache = tmp_path / "cache"
    path = await store.fetch_to_cache(ref, cache)
    assert path == cache / f"{ref.sha256}.safetensors"
    assert path.read_bytes() == data
    await store.delete(ref.bucket, ref.key)
    assert await store.fetch_to_cache(ref, cache) == path  # served from the cache, no download
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


async def test_fetch_to_cache_refuses_bytes_that_do_not_match(store, tmp_path):
    ref = await store.put_bytes(BUCKET_TUNES, "tunes/t1/8/model.safetensors", b"original")
    await store.put_bytes(BUCKET_TUNES, ref.key, b"replaced!")
    with pytest.raises(FailedPrecondition, match="does not match"):
        await store.fetch_to_cache(ref, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInput):
        await store.fetch_to_cache(common_pb2.ObjectRef(bucket=BUCKET_TUNES, key=ref.key), tmp_path)


async def test_unreachable_endpoint_is_unavailable_quickly(tmp_path):
    server = S3ServerProcess.start(log_dir=tmp_path)
    try:
        store = ObjectStore.from_settings(S3Settings(endpoint=server.endpoint), read_timeout=0.5, retries=1)
        await store.ensure_buckets([BUCKET_JOBS])
        await store.put_bytes(BUCKET_JOBS, "k", b"v")

        with server.paused():  # accepts connections, answers nothing
            started = time.monotonic()
            with pytest.raises(Unavailable, match=server.endpoint):
                await store.get_bytes(BUCKET_JOBS, "k")
            assert time.monotonic() - started < 5
        assert await store.get_bytes(BUCKET_JOBS, "k") == b"v"

        server.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unreachable"):
            await store.put_bytes(BUCKET_JOBS, "k2", b"v")
        assert time.monotonic() - started < 5
    finally:
        server.stop()


async def test_urls_are_signed_in_the_event_loop_without_a_thread_or_the_network(s3_settings, monkeypatch):
    # A GetJob signs one URL per image: a thread hop per URL cost more than the signing itself.
    store = ObjectStore.from_settings(s3_settings)

    def no_thread(*_args, **_kwargs):
        raise AssertionError("signing went to a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    url = await store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=120)
    assert "X-Amz-Expires=120" in url and f"/{BUCKET_JOBS}/{KEY}?" in url
    with pytest.raises(InvalidInput):
        await store.presigned_get(BUCKET_JOBS, KEY, expires_seconds=0)
