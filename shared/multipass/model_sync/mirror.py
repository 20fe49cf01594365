"""Mirror one prefix of an object-store bucket into a local directory: the node-local model cache.

The diffusion and segmentation pods run this in an init container (``python -m multipass.model_sync``) before
the service starts, so the services only ever read models from ``MULTIPASS_MODEL_DIR`` and never
download at run time.

- An object ``<prefix><path>`` lands at ``<dest>/<path>``; the prefix is treated as a folder.
- A file is skipped when it is already current: same size and the same ETag as recorded in the
  manifest (``.multipass-sync.json`` in ``dest``) at its last download, and not modified since. A
  file the manifest does not know (a cache seeded by hand) is current when its MD5 equals a
  single-part ETag, or its SHA-256 equals the object's ``x-amz-meta-sha256`` metadata.
- Every download goes to a temporary ``.part`` file in the target's folder, is checked (size, and
  SHA-256 when the object carries it), fsynced and renamed into place: a reader never sees half a
  file, and an interrupted sync leaves the previous file intact.
- An exclusive lock on ``dest`` serialises concurrent syncs into one shared cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from minio import Minio
from minio.error import MinioException
from urllib3.exceptions import HTTPError

from multipass.errors import Internal, InvalidInput, Unavailable, Violation

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".multipass-sync.json"
LOCK_NAME = ".multipass-sync.lock"
PART_SUFFIX = ".part"
SHA256_METADATA = "x-amz-meta-sha256"
_CHUNK = 1 << 20
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_RESERVED = {MANIFEST_NAME, LOCK_NAME}


@dataclass(frozen=True)
class RemoteFile:
    """One object under the prefix, and where it goes below ``dest``."""

    key: str
    path: PurePosixPath
    size: int
    etag: str


@dataclass
class SyncReport:
    """What one sync did, by path relative to ``dest``."""

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "downloaded": len(self.downloaded),
            "skipped": len(self.skipped),
            "deleted": len(self.deleted),
            "bytes_downloaded": self.bytes_downloaded,
        }


def normalize_prefix(prefix: str) -> str:
    """``"diffusion"`` and ``"diffusion/"`` both name the folder ``diffusion/``; ``""`` is the whole bucket."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def relative_path(key: str, prefix: str) -> PurePosixPath:
    """The local path below ``dest`` of object ``key``; refuses keys that would escape ``dest``."""
    if not key.startswith(prefix):
        raise InvalidInput(f"object {key!r} is outside prefix {prefix!r}", violations=[Violation("key", key)])
    rest = key[len(prefix) :]
    parts = rest.split("/")
    if not rest or rest.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InvalidInput(
            f"object key {key!r} does not map to a file below the destination",
            violations=[Violation("key", "empty, absolute, '.' or '..' path segment")],
        )
    path = PurePosixPath(*parts)
    if path.name in _RESERVED or path.name.endswith(PART_SUFFIX):
        raise InvalidInput(
            f"object key {key!r} collides with the sync's own files",
            violations=[
                Violation("key", f"names ending in {PART_SUFFIX} and {sorted(_RESERVED)} are reserved")
            ],
        )
    return path


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"').lower()


def list_remote(client: Minio, *, bucket: str, prefix: str) -> list[RemoteFile]:
    """Every object below ``prefix`` (folder markers left out), sorted by key."""
    prefix = normalize_prefix(prefix)
    try:
        objects = list(client.list_objects(bucket_name=bucket, prefix=prefix or None, recursive=True))
    except (MinioException, HTTPError, OSError) as error:
        raise Unavailable(f"cannot list s3://{bucket}/{prefix}: {error}") from error
    remote = []
    for obj in objects:
        if obj.is_dir or obj.object_name.endswith("/"):
            continue
        path = relative_path(obj.object_name, prefix)
        remote.append(
            RemoteFile(key=obj.object_name, path=path, size=int(obj.size), etag=_clean_etag(obj.etag))
        )
    return sorted(remote, key=lambda item: item.key)


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Manifest:
    """What the last downloads were: ETag, size, SHA-256 and the file's mtime, by relative path."""

    def __init__(self, dest: Path, bucket: str, prefix: str):
        self.path = dest / MANIFEST_NAME
        self.source = {"bucket": bucket, "prefix": prefix}
        self.files: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if (
            isinstance(data, dict)
            and data.get("source") == self.source
            and isinstance(data.get("files"), dict)
        ):
            self.files = data["files"]

    def record(self, path: str, *, etag: str, size: int, sha256: str | None, local: Path) -> None:
        self.files[path] = {
            "etag": etag,
            "size": size,
            "sha256": sha256,
            "mtime_ns": local.stat().st_mtime_ns,
        }

    def matches(self, path: str, remote: RemoteFile, stat: os.stat_result) -> bool:
        entry = self.files.get(path)
        return bool(
            entry
            and entry.get("etag") == remote.etag
            and entry.get("size") == remote.size == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        )

    def save(self, keep: set[str]) -> None:
        files = {path: entry for path, entry in self.files.items() if path in keep}
        _atomic_write(
            self.path, json.dumps({"source": self.source, "files": files}, indent=1, sort_keys=True)
        )


def _atomic_write(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    with (dest / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_stale_parts(dest: Path) -> None:
    """Temporary files left by an interrupted sync (the lock is held, so none is in use)."""
    for part in dest.rglob(f".*{PART_SUFFIX}"):
        if part.is_file():
            part.unlink()


def _is_current(
    client: Minio, bucket: str, remote: RemoteFile, local: Path, manifest: _Manifest
) -> str | None:
    """``None`` when ``local`` must be downloaded; otherwise its SHA-256 if known, or ``""``."""
    try:
        stat = local.stat()
    except FileNotFoundError:
        return None
    name = remote.path.as_posix()
    if stat.st_size != remote.size:
        return None
    if manifest.matches(name, remote, stat):
        return manifest.files[name].get("sha256") or ""
    if _PLAIN_MD5.match(remote.etag) and _file_digest(local, "md5") == remote.etag:
        return ""
    try:
        expected = client.stat_object(bucket_name=bucket, object_name=remote.key).metadata.get(
            SHA256_METADATA
        )
    except (MinioException, HTTPError, OSError) as error:
        raise Unavailable(f"cannot stat s3://{bucket}/{remote.key}: {error}") from error
    if expected:
        actual = _file_digest(local, "sha256")
        if actual == expected.lower():
            return actual
    return None


def download(client: Minio, *, bucket: str, key: str, target: Path) -> tuple[str, int, str]:
    """Fetch one object to ``target`` atomically; returns (etag, size, sha256) of what was written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=target.parent)
    response = None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = client.get_object(bucket_name=bucket, object_name=key)
                sha256 = hashlib.sha256()
                size = 0
                for chunk in response.stream(_CHUNK):
                    out.write(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
            except (MinioException, HTTPError, OSError) as error:
                raise Unavailable(f"cannot download s3://{bucket}/{key}: {error}") from error
            out.flush()
            os.fsync(out.fileno())
        expected_size = response.headers.get("content-length")
        if expected_size is not None and int(expected_size) != size:
            raise Unavailable(f"s3://{bucket}/{key}: got {size} bytes, expected {expected_size}")
        digest = sha256.hexdigest()
        expected_sha = response.headers.get(SHA256_METADATA)
        if expected_sha and expected_sha.lower() != digest:
            raise Internal(f"s3://{bucket}/{key}: sha256 {digest} does not match its metadata {expected_sha}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return _clean_etag(response.headers.get("etag")), size, digest
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def _delete_extraneous(dest: Path, keep: set[str]) -> list[str]:
    deleted = []
    for path in sorted(dest.rglob("*"), reverse=True):
        relative = path.relative_to(dest).as_posix()
        if path.is_dir() and not path.is_symlink():
            with suppress(OSError):
                path.rmdir()  # only empty folders go
            continue
        if relative in keep or relative in _RESERVED:
            continue
        path.unlink()
        deleted.append(relative)
    return sorted(deleted)


def sync_prefix(
    client: Minio,
    *,
    bucket: str,
    prefix: str = "",
    dest: Path,
    delete: bool = False,
    workers: int = 4,
) -> SyncReport:
    """Make ``dest`` hold exactly the objects below ``prefix`` (plus extra local files unless ``delete``)."""
    if workers < 1:
        raise InvalidInput("workers must be at least 1", violations=[Violation("workers", str(workers))])
    prefix = normalize_prefix(prefix)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = SyncReport()
    with _locked(dest):
        _remove_stale_parts(dest)
        remote = list_remote(client, bucket=bucket, prefix=prefix)
        manifest = _Manifest(dest, bucket, prefix)
        pending = []
        for item in remote:
            local = dest / item.path
            known_sha = _is_current(client, bucket, item, local, manifest)
            if known_sha is None:
                pending.append(item)
                continue
            manifest.record(
                item.path.as_posix(), etag=item.etag, size=item.size, sha256=known_sha or None, local=local
            )
            report.skipped.append(item.path.as_posix())

        def fetch(item: RemoteFile) -> tuple[RemoteFile, str, int, str]:
            etag, size, sha256 = download(client, bucket=bucket, key=item.key, target=dest / item.path)
            logger.info("downloaded %s", item.key, extra={"bytes": size, "bucket": bucket})
            return item, etag, size, sha256

        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fetch, item) for item in pending]
            for future in futures:
                try:
                    item, etag, size, sha256 = future.result()
                except Exception as error:  # keep what did arrive, then report the first failure
                    errors.append(error)
                    continue
                name = item.path.as_posix()
                manifest.record(name, etag=etag, size=size, sha256=sha256, local=dest / item.path)
                report.downloaded.append(name)
                report.bytes_downloaded += size
        keep = {item.path.as_posix() for item in remote}
        manifest.save(keep)
        if errors:
            raise errors[0]
        if delete:
            report.deleted = _delete_extraneous(dest, keep)
    report.downloaded.sort()
    logger.info("model sync done", extra={"bucket": bucket, "prefix": prefix, **report.summary()})
    return report
