"""``multipass models pull``: fill the model directory from the Hugging Face Hub, file by file, as the manifest says.

For every file of the chosen profiles (:mod:`multipass.model_catalog.manifest`), ``huggingface_hub`` asks
the Hub for the file's metadata (``get_hf_file_metadata``: its commit, size, ETag and where it is served
from), then the bytes come over HTTP into ``.<name>.<etag>.part`` beside the target:

- **Only the named files.** A profile lists each file (the fp16 weights where a repository has them), so
  nothing else of a repository is fetched; ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN`` (gated or private
  repositories; otherwise the token of ``hf auth login``) are honoured, read once by :class:`HubSettings`.
- **Resumable.** A pull that is killed or loses its connection leaves the part file; the next pull asks
  for the rest with a ``Range`` request, so only what had not arrived is fetched again (a server that
  ignores the range sends the whole file, which replaces the part). A part file of an older version of the
  file (another ETag) is removed. ``huggingface_hub``'s own ``hf_hub_download`` cannot do this across
  processes: it writes to a temporary file of a random name and deletes it on failure.
- **Checked.** The finished part must have the size the Hub announced and the manifest's ``sha256`` if it
  names one, else the SHA-256 the Hub publishes (the ETag of an LFS file) or the git blob hash (the ETag
  of a small file). A file that does not match is deleted and refused, naming expected and actual digests.
- **Configs last.** Weights come before the ``config.json`` / ``model_index.json`` that announce them
  (:func:`in_pull_order`), so a directory a pull left half-filled never shows a component as installed.
- **Atomic.** Only a checked file is renamed to its target; the pull record
  (``<MODEL_DIR>/.multipass-pull.json``: repository, revision, commit, ETag, size, SHA-256 by target) then
  lets the next pull skip it without reading it again. A target that exists but is not the manifest's file
  and was not pulled is left alone unless ``force``.
- One pull at a time per directory (``.multipass-pull.lock``); a progress bar per file on ``stream``.

The command never runs inside a service: the services only read the directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlparse

from multipass.errors import (
    ConfigError,
    FailedPrecondition,
    Internal,
    NotFound,
    PermissionDenied,
    Unavailable,
    Violation,
)
from multipass.model_catalog.manifest import Manifest, ModelFile, Profile, in_pull_order

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
RECORD_NAME = ".multipass-pull.json"
LOCK_NAME = ".multipass-pull.lock"
PART_SUFFIX = ".part"
#: Bytes written to the part file per read: what a killed pull can lose at most (beyond socket buffers).
CHUNK = 1 << 20
#: Attempts at one file's bytes when the connection drops mid-way (each resumes where the last stopped).
STREAM_ATTEMPTS = 5
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}")


@dataclass(frozen=True)
class HubSettings:
    """Where the Hub is and who we are there, from ``HF_ENDPOINT`` and ``HF_TOKEN`` (read once)."""

    endpoint: str = DEFAULT_ENDPOINT
    #: None: ``huggingface_hub`` looks for a token itself (``hf auth login``).
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HubSettings:
        env = os.environ if environ is None else environ
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                "HF_ENDPOINT is not an http(s) URL",
                violations=[Violation("HF_ENDPOINT", f"got {endpoint!r}; expected e.g. {DEFAULT_ENDPOINT}")],
            )
        return cls(endpoint=endpoint, token=env.get("HF_TOKEN") or None)


@dataclass
class PullReport:
    """What one pull did, by target path relative to the model directory."""

    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    #: Bytes fetched by this pull (a resumed file counts only what was still missing).
    bytes_downloaded: int = 0
    #: Target → bytes already there when this pull resumed it.
    resumed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "downloaded": len(self.downloaded),
            "present": len(self.present),
            "bytes_downloaded": self.bytes_downloaded,
            "resumed": len(self.resumed),
        }


@dataclass(frozen=True)
class _Remote:
    """The Hub's answer about one file."""

    url: str
    location: str
    etag: str
    size: int | None
    commit: str


class ChecksumMismatch(Internal):
    """A downloaded file is not the file the manifest or the Hub names."""


# -- the record --------------------------------------------------------------------------------------


def read_record(model_dir: Path) -> dict[str, dict]:
    """Target → what was pulled there (``{}`` when nothing was)."""
    try:
        data = json.loads((Path(model_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _write_record(model_dir: Path, files: dict[str, dict]) -> None:
    target = model_dir / RECORD_NAME
    fd, tmp = tempfile.mkstemp(prefix=f"{RECORD_NAME}.", suffix=PART_SUFFIX, dir=model_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"files": files}, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    with (model_dir / LOCK_NAME).open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FailedPrecondition(f"another `multipass models pull` is filling {model_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# -- digests -----------------------------------------------------------------------------------------


def file_digests(path: Path) -> tuple[str, str]:
    """(SHA-256, git blob SHA-1) of a file, read once."""
    sha256 = hashlib.sha256()
    size = path.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def expected_digest(item: ModelFile, etag: str) -> tuple[str, str] | None:
    """("sha256" | "git-sha1", hex digest) a downloaded file must have; None when nothing names one."""
    if item.sha256:
        return "sha256", item.sha256
    if _SHA256.match(etag):
        return "sha256", etag
    if _GIT_SHA1.match(etag):
        return "git-sha1", etag
    return None


def _matches(expected: tuple[str, str], digests: tuple[str, str]) -> bool:
    kind, value = expected
    return (digests[0] if kind == "sha256" else digests[1]) == value


# -- the Hub -----------------------------------------------------------------------------------------


def _hub_error(item: ModelFile, hub: HubSettings, error: Exception) -> Exception | None:
    """Our error for a failed Hub call (what the user can do about it, naming the repository and file);
    None for an error that is not the Hub's (a full disk, a bug), which then propagates unchanged."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{hub.endpoint}/{item.repo}"
    if isinstance(error, GatedRepoError) or (
        isinstance(error, HfHubHTTPError) and error.response is not None and error.response.status_code == 403
    ):
        return PermissionDenied(
            f"{item.repo} is gated: accept its terms at {page} and set HF_TOKEN to a token of that account"
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = "HF_TOKEN is set but has no access to it" if hub.token else "set HF_TOKEN if it is private"
        return NotFound(f"repository {item.repo} not found at {hub.endpoint} ({hint})")
    if isinstance(error, RevisionNotFoundError):
        return NotFound(f"{item.repo} has no revision {item.revision!r}")
    if isinstance(error, RemoteEntryNotFoundError):
        return NotFound(f"{item.repo}@{item.revision} has no file {item.path}")
    status = (
        error.response.status_code
        if isinstance(error, HfHubHTTPError) and error.response is not None
        else None
    )
    if status == 401:  # not a missing repository (above): the token itself is refused
        where = "HF_TOKEN" if hub.token else "the token saved by `hf auth login`"
        return PermissionDenied(
            f"{hub.endpoint} refuses {where} (invalid or expired) for {item.source}: set HF_TOKEN to a valid "
            f"token (see {hub.endpoint}/settings/tokens), or unset it for public repositories"
        )
    if isinstance(error, HfHubHTTPError):
        answer = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Unavailable(f"{item.source}: the Hub answered {answer}; run the pull again to resume")
    if isinstance(error, httpx2.TransportError):
        return Unavailable(
            f"cannot reach {hub.endpoint} for {item.source}: {error}; run the pull again to resume"
        )
    return None


def _remote(item: ModelFile, hub: HubSettings) -> _Remote:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(item.repo, item.path, revision=item.revision, endpoint=hub.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hub.token, endpoint=hub.endpoint, retry_on_errors=True)
    except Exception as error:
        mapped = _hub_error(item, hub, error)
        if mapped is None:
            raise
        raise mapped from error
    if not meta.etag or not meta.commit_hash:
        raise Unavailable(
            f"{url} did not answer like a Hugging Face Hub (no ETag or X-Repo-Commit): check HF_ENDPOINT"
        )
    location = meta.location or url
    if urlparse(location).scheme.lower() not in ("http", "https"):
        raise Unavailable(
            f"{url} sends the file to {location[:120]!r}, which is not an http(s) address: check HF_ENDPOINT"
        )
    return _Remote(url=url, location=location, etag=meta.etag, size=meta.size, commit=meta.commit_hash)


def _download_headers(remote: _Remote, hub: HubSettings) -> dict[str, str]:
    """The Hub's headers; the token only goes where the file's own address is (never to a CDN elsewhere)."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=hub.token, library_name="multipass")
    origin = urlparse(remote.url)
    target = urlparse(remote.location)
    if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
        headers.pop("authorization", None)
    headers["Accept-Encoding"] = "identity"
    return headers


def _stream(item: ModelFile, remote: _Remote, hub: HubSettings, part: Path, bar_factory) -> tuple[int, int]:
    """Fetch the rest of ``part`` (from its current size); returns (bytes it held before, bytes fetched)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    headers = _download_headers(remote, hub)
    if part.is_symlink() or (part.exists() and not part.is_file()):
        part.unlink()  # not a part file this command wrote: never written through
    start = part.stat().st_size if part.exists() else 0
    if remote.size is not None and start > remote.size:
        part.unlink()
        start = 0
    have = start
    fetched = 0
    with bar_factory(desc=item.target, total=remote.size, initial=have) as bar:
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            if remote.size is not None and have == remote.size:
                break
            request_headers = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
            try:
                with http_stream_backoff("GET", remote.location, headers=request_headers) as response:
                    hf_raise_for_status(response)
                    if have and response.status_code != 206:
                        bar.update(-have)  # the server ignored the range: the whole file comes again
                        have = 0
                    with _open_part(part) as out:
                        out.seek(have)
                        out.truncate()
                        for chunk in response.iter_bytes(chunk_size=CHUNK):
                            if remote.size is not None and have + len(chunk) > remote.size:
                                part.unlink()
                                raise ChecksumMismatch(
                                    f"{item.source}: the server sent more than the {remote.size} bytes the "
                                    "Hub announced; refused (check HF_ENDPOINT)"
                                )
                            out.write(chunk)
                            have += len(chunk)
                            fetched += len(chunk)
                            bar.update(len(chunk))
                        out.flush()
                        os.fsync(out.fileno())
                if remote.size is None or have == remote.size:
                    break
            except HfHubHTTPError as error:
                raise _hub_error(item, hub, error) from error
            except httpx2.TransportError as error:
                if attempt == STREAM_ATTEMPTS:
                    raise _hub_error(item, hub, error) from error
                log.warning(
                    "download interrupted; resuming",
                    extra={"file": item.target, "bytes": have, "attempt": attempt, "error": str(error)},
                )
    if remote.size is not None and have != remote.size:
        raise Unavailable(f"{item.source}: got {have} of {remote.size} bytes; run the pull again to resume")
    return start, fetched


def _open_part(part: Path):
    """The part file for writing, created if absent, never through a symbolic link (O_NOFOLLOW)."""
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "r+b")


def _part_path(target: Path, etag: str) -> Path:
    """``.<name>.<16 hex digits of the ETag>.part`` beside the target (the ETag's own when it is a digest,
    else of its hash: an ETag is the Hub's text, never a piece of a path)."""
    tag = etag[:16] if _HEX16.match(etag) else hashlib.sha256(etag.encode()).hexdigest()[:16]
    return target.with_name(f".{target.name}.{tag}{PART_SUFFIX}")


def _stale_parts(target: Path, keep: Path) -> list[Path]:
    return [p for p in target.parent.glob(f".{target.name}.*{PART_SUFFIX}") if p != keep]


def _pull_file(
    item: ModelFile,
    model_dir: Path,
    hub: HubSettings,
    record: dict[str, dict],
    report: PullReport,
    *,
    force: bool,
    bar_factory,
) -> None:
    target = model_dir / item.target
    remote = _remote(item, hub)
    if item.bytes is not None and remote.size is not None and item.bytes != remote.size:
        raise ChecksumMismatch(
            f"{item.source} is {remote.size} bytes on the Hub; the manifest names a file of {item.bytes} bytes"
        )
    expected = expected_digest(item, remote.etag)
    if expected is None:
        raise ChecksumMismatch(
            f"{item.source} cannot be checked: the Hub's ETag {remote.etag[:80]!r} is neither a SHA-256 nor a "
            "git blob hash and the manifest names no sha256; refused (check HF_ENDPOINT)"
        )
    entry = record.get(item.target)
    if target.exists() and not target.is_file():
        raise FailedPrecondition(f"{target} exists and is not a file; move it away")
    if target.is_file():
        size = target.stat().st_size
        if (
            entry is not None
            and entry.get("etag") == remote.etag
            and entry.get("bytes") == size
            and (item.sha256 is None or entry.get("sha256") == item.sha256)
        ):
            report.present.append(item.target)
            return
        if remote.size is None or size == remote.size:
            digests = file_digests(target)
            if _matches(expected, digests):
                record[item.target] = _entry(item, remote, size, digests[0])
                report.present.append(item.target)
                return
        if entry is None and not force:
            raise FailedPrecondition(
                f"{target} exists and is not {item.source}; move it away or pull with --force to replace it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(target, remote.etag)
    for stale in _stale_parts(target, part):
        stale.unlink()
    start, fetched = _stream(item, remote, hub, part, bar_factory)
    if start:
        report.resumed[item.target] = start
    report.bytes_downloaded += fetched
    digests = file_digests(part)
    if not _matches(expected, digests):
        part.unlink()
        kind, value = expected
        actual = digests[0] if kind == "sha256" else digests[1]
        raise ChecksumMismatch(
            f"{item.source} refused: its {kind} is {actual}, expected {value} "
            f"({'the manifest' if item.sha256 else 'the Hub'}); the download was deleted"
        )
    os.chmod(part, 0o644)
    os.replace(part, target)
    _fsync_dir(target.parent)
    record[item.target] = _entry(item, remote, target.stat().st_size, digests[0])
    report.downloaded.append(item.target)
    log.info(
        "pulled",
        extra={"file": item.target, "source": item.source, "bytes": fetched, "commit": remote.commit},
    )


def _entry(item: ModelFile, remote: _Remote, size: int, sha256: str) -> dict:
    return {
        "repo": item.repo,
        "revision": item.revision,
        "path": item.path,
        "commit": remote.commit,
        "etag": remote.etag,
        "bytes": size,
        "sha256": sha256,
    }


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def progress_bars(stream: TextIO | None = None, *, enabled: bool | None = None):
    """A tqdm class for one bar per file on ``stream``; ``enabled`` None = only on a terminal."""
    from tqdm import tqdm

    out = stream or sys.stderr
    show = out.isatty() if enabled is None else enabled

    class FileBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("unit", "B")
            kwargs.setdefault("unit_scale", True)
            kwargs.setdefault("unit_divisor", 1024)
            super().__init__(*args, file=out, disable=not show, mininterval=0.5, dynamic_ncols=True, **kwargs)

    return FileBar


def pull(
    manifest: Manifest,
    profiles: list[Profile],
    model_dir: Path,
    hub: HubSettings,
    *,
    force: bool = False,
    stream: TextIO | None = None,
    progress: bool | None = None,
) -> PullReport:
    """Fetch every file of ``profiles`` into ``model_dir`` (see the module's docstring)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    bar_factory = progress_bars(stream, enabled=progress)
    report = PullReport()
    with _locked(model_dir):
        record = read_record(model_dir)
        for item in in_pull_order(manifest.files(profiles)):
            _pull_file(item, model_dir, hub, record, report, force=force, bar_factory=bar_factory)
            _write_record(model_dir, record)
    return report
