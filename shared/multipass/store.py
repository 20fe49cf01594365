"""The S3/MinIO object store: images and files in, references out (see docs/CONTRACTS.md).

The ``minio`` client is synchronous; every call runs in a worker thread (``asyncio.to_thread``) with
arguments passed by keyword. Failures come out as our errors: a missing object is :class:`NotFound`
naming bucket and key, an unreachable or failing endpoint is :class:`Unavailable` (after a short,
bounded retry, so callers can nak and move on), an object larger than the caller allows is
:class:`InvalidInput`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from PIL import Image

from multipass.connections import S3Settings
from multipass.errors import FailedPrecondition, Internal, InvalidInput, NotFound, Unavailable, Violation
from multipass.image_work import decode_image_async, encode_png_async
from multipass.images import DEFAULT_MAX_PIXELS, sha256_hex
from multipass.v1 import common_pb2

PNG = "image/png"
_CHUNK = 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}
_TRANSIENT = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "XMinioServerNotInitialized",
}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str
    last_modified: datetime | None


def http_client(
    *, connect_timeout: float, read_timeout: float, retries: int, secure: bool
) -> urllib3.PoolManager:
    """A pool that gives up fast on an unreachable endpoint: short connect timeout, few quick retries."""
    kwargs: dict = {}
    if secure:
        import certifi

        kwargs = {
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": os.environ.get("SSL_CERT_FILE") or certifi.where(),
        }
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        retries=urllib3.Retry(
            total=retries,
            connect=retries,
            read=min(retries, 1),
            backoff_factor=0.1,
            backoff_max=1.0,
            status_forcelist=[500, 502, 503, 504],
            respect_retry_after_header=False,
        ),
        **kwargs,
    )


@dataclass(frozen=True)
class PublicEndpoint:
    """Where clients outside the cluster reach the object store: what presigned URLs point at."""

    #: ``host:port`` (or ``host``), as the ``minio`` client takes it.
    host: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> PublicEndpoint:
        """``http://host[:port]`` or ``https://host[:port]``; ValueError saying what is expected."""
        parsed = urlsplit(url.strip())
        expected = "expected http(s)://host[:port] without path, query or credentials"
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"got {url!r}; {expected}")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
            raise ValueError(f"got {url!r}; {expected}")
        try:
            port = parsed.port  # raises on a port outside 0..65535
        except ValueError:
            port = None
        if ":" in parsed.netloc.rsplit("]", 1)[-1] and not (port and 1 <= port <= 65535):
            raise ValueError(f"got {url!r}; the port must be 1..65535")
        return cls(host=parsed.netloc, secure=parsed.scheme == "https")

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}"


def presigning_client(settings: S3Settings, public: PublicEndpoint) -> Minio:
    """A client that only signs URLs for ``public``: the signature covers the host, so it must be the host
    clients will send. Its region is fixed, so signing never asks the endpoint (it may be unreachable
    from inside the cluster)."""
    return Minio(
        endpoint=public.host,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=public.secure,
        region=settings.region,
    )


def png_ref(bucket: str, key: str, data: bytes, *, width: int, height: int) -> common_pb2.ImageRef:
    """The reference :meth:`ObjectStore.put_png` returns for ``data`` stored at ``bucket/key``."""
    return common_pb2.ImageRef(
        bucket=bucket,
        key=key,
        sha256=sha256_hex(data),
        size=len(data),
        width=width,
        height=height,
        content_type=PNG,
    )


class ObjectStore:
    """Async access to S3 buckets through the ``minio`` client.

    Presigned URLs are signed by ``presigner``: the same client unless a public endpoint is configured
    (``MULTIPASS_S3_PUBLIC_ENDPOINT``), in which case the URLs point at that endpoint.
    """

    def __init__(
        self, client: Minio, *, endpoint: str, presigner: Minio | None = None, offline_signing: bool = False
    ):
        self.client = client
        self.endpoint = endpoint
        self.presigner = presigner or client
        #: The presigner's region and keys are fixed, so a URL is signed without asking the endpoint: in the
        #: event loop (about 70 us) rather than on a worker thread (a hop that costs more than the signing).
        self.offline_signing = offline_signing

    @classmethod
    def from_settings(
        cls,
        settings: S3Settings,
        *,
        public_endpoint: PublicEndpoint | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 20.0,
        retries: int = 2,
    ) -> ObjectStore:
        """A store for ``settings``; with ``public_endpoint`` its presigned URLs point there."""
        client = Minio(
            endpoint=settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http_client(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries=retries,
                secure=settings.secure,
            ),
        )
        presigner = presigning_client(settings, public_endpoint) if public_endpoint is not None else None
        # Both clients have the settings' region and static keys (see presigning_client).
        return cls(client, endpoint=settings.endpoint, presigner=presigner, offline_signing=True)

    # plumbing ------------------------------------------------------------------------------------

    def _translate(self, error: Exception, bucket: str, key: str | None) -> Exception:
        where = f"{bucket}/{key}" if key is not None else f"bucket {bucket}"
        if isinstance(error, S3Error):
            if error.code in _MISSING:
                if error.code == "NoSuchBucket":
                    return NotFound(f"bucket {bucket} does not exist (looking for {where})")
                return NotFound(f"object {where} does not exist")
            if error.code in _TRANSIENT:
                return Unavailable(f"object store at {self.endpoint} failed on {where}: {error.code}")
            if error.code in _DENIED:
                return FailedPrecondition(
                    f"object store at {self.endpoint} refused access to {where}: {error.code}"
                )
            return Internal(f"object store error on {where}: {error.code} {error.message}")
        if isinstance(error, ServerError):
            return Unavailable(f"object store at {self.endpoint} failed on {where}: HTTP {error.status_code}")
        if isinstance(error, InvalidResponseError):
            status = getattr(error, "_code", None) or 0
            if isinstance(status, int) and status >= 500:
                return Unavailable(f"object store at {self.endpoint} failed on {where}: HTTP {status}")
            return Internal(f"object store at {self.endpoint} answered nonsense on {where}: {error}")
        if isinstance(error, (urllib3.exceptions.HTTPError, OSError, TimeoutError)):
            return Unavailable(
                f"object store at {self.endpoint} unreachable ({where}): {type(error).__name__}"
            )
        return error

    async def _run(self, fn: Callable[[], T], bucket: str, key: str | None = None) -> T:
        def call() -> T:
            try:
                return fn()
            except (
                S3Error,
                ServerError,
                InvalidResponseError,
                urllib3.exceptions.HTTPError,
                OSError,
            ) as error:
                raise self._translate(error, bucket, key) from error

        return await asyncio.to_thread(call)

    # buckets -------------------------------------------------------------------------------------

    async def ensure_buckets(self, names: Iterable[str]) -> None:
        """Create the buckets that do not exist (concurrent creators are fine)."""
        for name in names:

            def make(name: str = name) -> None:
                if self.client.bucket_exists(bucket_name=name):
                    return
                try:
                    self.client.make_bucket(bucket_name=name)
                except S3Error as error:
                    if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

            await self._run(make, name)

    # writing -------------------------------------------------------------------------------------

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> common_pb2.ObjectRef:
        """Store ``data`` at ``bucket/key`` (overwriting); the reference carries its sha256 and size."""
        data = bytes(data)
        await self._put(bucket, key, data, content_type)
        return common_pb2.ObjectRef(bucket=bucket, key=key, sha256=sha256_hex(data), size=len(data))

    async def put_file(
        self,
        bucket: str,
        key: str,
        fileobj: BinaryIO,
        size: int,
        sha256: str,
        content_type: str = "application/octet-stream",
    ) -> common_pb2.ObjectRef:
        """Store the ``size`` bytes ``fileobj`` reads from its position at ``bucket/key`` (overwriting),
        reading them part by part rather than whole; ``sha256`` is the caller's hex digest of those bytes,
        carried by the reference like :meth:`put_bytes`'."""
        await self._run(
            lambda: self.client.put_object(
                bucket_name=bucket, object_name=key, data=fileobj, length=size, content_type=content_type
            ),
            bucket,
            key,
        )
        return common_pb2.ObjectRef(bucket=bucket, key=key, sha256=sha256, size=size)

    async def _put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        await self._run(
            lambda: self.client.put_object(
                bucket_name=bucket,
                object_name=key,
                data=io.BytesIO(data),
                length=len(data),
                content_type=content_type,
            ),
            bucket,
            key,
        )

    async def put_image(self, bucket: str, key: str, image: Image.Image) -> common_pb2.ImageRef:
        """Store ``image`` as PNG; the reference carries sha256, size, width, height and content type."""
        data = await encode_png_async(image)
        return await self.put_png(bucket, key, data, width=image.width, height=image.height)

    async def put_png(
        self, bucket: str, key: str, data: bytes, *, width: int, height: int
    ) -> common_pb2.ImageRef:
        """Store already-encoded PNG bytes (encode once, store under several keys); returns
        :func:`png_ref` of them."""
        ref = png_ref(bucket, key, data, width=width, height=height)
        await self.put_png_at(ref, data)
        return ref

    async def put_png_at(self, ref: common_pb2.ImageRef, data: bytes) -> None:
        """Store PNG bytes under the reference :func:`png_ref` made of them (their sha256 taken once)."""
        await self._put(ref.bucket, ref.key, bytes(data), PNG)

    # reading -------------------------------------------------------------------------------------

    async def get_bytes(
        self, bucket: str, key: str, *, max_bytes: int | None = None, field: str = "object"
    ) -> bytes:
        """The object's bytes; InvalidInput (naming ``field``) if it is larger than ``max_bytes``."""

        def read() -> bytes:
            response = self.client.get_object(bucket_name=bucket, object_name=key)
            try:
                declared = response.headers.get("content-length")
                if max_bytes is not None and declared is not None and int(declared) > max_bytes:
                    raise _TooLarge(int(declared))
                chunks, total = [], 0
                for chunk in response.stream(_CHUNK):
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise _TooLarge(total, partial=True)
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                response.close()
                response.release_conn()

        try:
            return await self._run(read, bucket, key)
        except _TooLarge as error:
            raise InvalidInput.of(
                [
                    Violation(
                        field,
                        f"{bucket}/{key} is {'at least ' if error.partial else ''}{error.size} bytes; at most {max_bytes} allowed",
                    )
                ]
            ) from None

    async def get_image(
        self,
        ref: common_pb2.ImageRef | common_pb2.ObjectRef,
        *,
        field: str = "image",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        mode: str = "RGB",
        max_bytes: int | None = 64 * 1024 * 1024,
    ) -> Image.Image:
        """Fetch and safely decode the image at ``ref`` (see :func:`multipass.images.decode_image`)."""
        data = await self.get_bytes(ref.bucket, ref.key, max_bytes=max_bytes, field=field)
        return await decode_image_async(data, field=field, max_pixels=max_pixels, mode=mode)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size, etag, content type and time of an object; NotFound if it does not exist."""
        result = await self._run(
            lambda: self.client.stat_object(bucket_name=bucket, object_name=key), bucket, key
        )
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(result.size or 0),
            etag=(result.etag or "").strip('"'),
            content_type=result.content_type or "",
            last_modified=result.last_modified,
        )

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self.stat(bucket, key)
        except NotFound:
            return False
        return True

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""
        return await self._run(
            lambda: sorted(
                obj.object_name
                for obj in self.client.list_objects(bucket_name=bucket, prefix=prefix or None, recursive=True)
                if obj.object_name is not None
            ),
            bucket,
        )

    async def list_modified(self, bucket: str, prefix: str) -> list[tuple[str, datetime]]:
        """``(key, last modified)`` of every object under ``prefix`` (recursively), sorted by key."""

        def listing() -> list[tuple[str, datetime]]:
            return sorted(
                (obj.object_name, obj.last_modified)
                for obj in self.client.list_objects(bucket_name=bucket, prefix=prefix or None, recursive=True)
                if obj.object_name is not None and obj.last_modified is not None
            )

        return await self._run(listing, bucket)

    # deleting ------------------------------------------------------------------------------------

    async def delete(self, bucket: str, key: str) -> None:
        """Remove one object; removing a missing object is not an error."""
        await self._run(lambda: self.client.remove_object(bucket_name=bucket, object_name=key), bucket, key)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Remove every object under ``prefix`` (which must not be empty); returns how many."""
        if not prefix:
            raise InvalidInput.of([Violation("prefix", "must not be empty (that would empty the bucket)")])
        return await self.delete_keys(bucket, await self.list_keys(bucket, prefix))

    async def delete_keys(self, bucket: str, keys: list[str]) -> int:
        """Remove these objects in one batched request (missing ones are not an error); returns how many."""
        if not keys:
            return 0

        def remove() -> None:
            failures = list(
                self.client.remove_objects(
                    bucket_name=bucket, delete_object_list=[DeleteObject(name=key) for key in keys]
                )
            )
            if failures:
                raise Internal(f"could not delete {len(failures)} objects in {bucket}: {failures[0]}")

        await self._run(remove, bucket, keys[0])
        return len(keys)

    # sharing -------------------------------------------------------------------------------------

    async def presigned_get(self, bucket: str, key: str, expires_seconds: int) -> str:
        """A URL that lets its holder GET the object for ``expires_seconds`` (1 s .. 7 days), on the public
        endpoint when one is configured."""
        if not 1 <= expires_seconds <= 7 * 24 * 3600:
            raise InvalidInput.of(
                [Violation("expires_seconds", f"got {expires_seconds}; expected 1..604800")]
            )

        def sign() -> str:
            return self.presigner.presigned_get_object(
                bucket_name=bucket, object_name=key, expires=timedelta(seconds=expires_seconds)
            )

        if self.offline_signing:
            return sign()
        return await self._run(sign, bucket, key)

    # node-local cache ----------------------------------------------------------------------------

    async def fetch_to_cache(
        self, ref: common_pb2.ObjectRef | common_pb2.ImageRef, cache_dir: str | Path
    ) -> Path:
        """A local file holding the object at ``ref``, downloaded once and keyed by its sha256.

        The file is ``<cache_dir>/<sha256><suffix of the key>`` (loaders that look at the suffix, such
        as ``.safetensors``, keep working). Bytes that do not hash to ``ref.sha256`` are discarded and
        raise FailedPrecondition: the stored object is not the one referenced.
        """
        expected = ref.sha256.lower()
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise InvalidInput.of(
                [Violation("sha256", f"got {ref.sha256!r}; a cached object needs its sha256")]
            )
        suffix = PurePosixPath(ref.key).suffix
        if not suffix.replace(".", "").isalnum():
            suffix = ""
        directory = Path(cache_dir)
        target = directory / f"{expected}{suffix}"
        if target.is_file() and (ref.size <= 0 or target.stat().st_size == ref.size):
            return target
        directory.mkdir(parents=True, exist_ok=True)

        def download() -> tuple[str, str, int]:
            response = self.client.get_object(bucket_name=ref.bucket, object_name=ref.key)
            handle, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{expected[:16]}-", suffix=".part")
            digest, size = hashlib.sha256(), 0
            try:
                with os.fdopen(handle, "wb") as out:
                    for chunk in response.stream(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)
                raise
            finally:
                response.close()
                response.release_conn()
            return temp_name, digest.hexdigest(), size

        temp_name, actual, size = await self._run(download, ref.bucket, ref.key)
        if actual != expected or (ref.size > 0 and size != ref.size):
            os.unlink(temp_name)
            raise FailedPrecondition(
                f"{ref.bucket}/{ref.key} does not match its reference: sha256 {actual} ({size} bytes), "
                f"expected {expected} ({ref.size} bytes)"
            )
        os.replace(temp_name, target)
        return target


class _TooLarge(Exception):
    def __init__(self, size: int, partial: bool = False):
        super().__init__(size)
        self.size = size
        self.partial = partial
