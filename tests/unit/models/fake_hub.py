"""A local stand-in for the Hugging Face Hub's file API, served by the test on loopback.

It answers the way the Hub does for what ``huggingface_hub`` asks about a file:

* ``HEAD``/``GET {endpoint}/{repo_id}/resolve/{revision}/{path}``: a small file is answered in place,
  with ``ETag`` = its git blob SHA-1 and ``X-Repo-Commit``; a large (LFS) file is a ``302`` to a second
  server (the "CDN", another origin, as on the real Hub) with ``X-Linked-Etag`` = its SHA-256 and
  ``X-Linked-Size``. Unknown repositories, revisions and files get the Hub's ``X-Error-Code`` answers, a
  private repository a 401 without ``Authorization: Bearer <token>``, any request with another token a
  401 whose ``X-Error-Message`` says its credentials are invalid.
* ``GET {cdn}/cdn/{sha256}``: the bytes, with ``Range`` requests answered ``206`` (resume).

Counters: ``bytes_sent`` (body bytes of every GET, both servers). ``throttle`` slows the body down (so a
test can kill a pull mid-file); ``corrupt`` serves other bytes than the announced ones for a file;
``etags`` answers another ETag for a small file; ``announced`` announces another size for a large one.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 1024
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-$")
#: What the Hub answers (401, ``X-Error-Message``) to a token it does not know, for any repository.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    private: bool = False
    revisions: tuple[str, ...] = ("main",)


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str = "hf_fake_token"
    #: Seconds to sleep after each 64 KiB of a body (0: full speed).
    throttle: float = 0.0
    #: (repo, path) → bytes served instead of the file (its announced size and digests stay the same).
    corrupt: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: (repo, path) → the ETag answered for a small file instead of its git blob hash.
    etags: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (repo, path) → the size announced for a large file instead of its own (its bytes are all sent).
    announced: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (repo, path) → where a large file's redirect points instead of the CDN.
    locations: dict[tuple[str, str], str] = field(default_factory=dict)
    bytes_sent: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- content -------------------------------------------------------------------------------------

    def add(self, repo_id: str, files: dict[str, bytes], **kwargs) -> FakeRepo:
        repo = FakeRepo(dict(files), **kwargs)
        self.repos[repo_id] = repo
        return repo

    def blob(self, sha: str) -> tuple[str, str, bytes] | None:
        for repo_id, repo in self.repos.items():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return repo_id, path, self.corrupt.get((repo_id, path), data)
        return None

    # -- serving -------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def count(self, sent: int) -> None:
        with self._lock:
            self.bytes_sent += sent

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _plain(self, status: int, error_code: str = "", headers: dict | None = None) -> None:
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, *, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                if self.server is hub._servers[1]:
                    self._cdn(body)
                else:
                    self._resolve(body)

            def _resolve(self, body: bool) -> None:
                match = _RESOLVE.match(self.path)
                if not match:
                    return self._plain(404)
                sent = self.headers.get("Authorization")
                if sent and sent != f"Bearer {hub.token}":  # as the Hub answers any unknown token
                    return self._plain(401, headers={"X-Error-Message": INVALID_CREDENTIALS})
                repo = hub.repos.get(match["repo"])
                if repo is None or (
                    repo.private and self.headers.get("Authorization") != f"Bearer {hub.token}"
                ):
                    return self._plain(401, "RepoNotFound")
                if match["revision"] not in repo.revisions and match["revision"] != repo.commit:
                    return self._plain(404, "RevisionNotFound")
                data = repo.files.get(match["path"])
                if data is None:
                    return self._plain(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
                if len(data) >= LFS_THRESHOLD:
                    sha = hashlib.sha256(data).hexdigest()
                    return self._plain(
                        302,
                        headers={
                            "Location": hub.locations.get(
                                (match["repo"], match["path"]), f"{hub.cdn}/cdn/{sha}"
                            ),
                            "X-Repo-Commit": repo.commit,
                            "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": str(
                                hub.announced.get((match["repo"], match["path"]), len(data))
                            ),
                            "ETag": f'W/"{git_blob_sha1(data)}"',
                        },
                    )
                served = hub.corrupt.get((match["repo"], match["path"]), data)
                etag = hub.etags.get((match["repo"], match["path"]), git_blob_sha1(data))
                self._bytes(served, 0, body, {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"'})

            def _cdn(self, body: bool) -> None:
                match = _CDN.match(self.path)
                found = hub.blob(match["sha"]) if match else None
                if found is None:
                    return self._plain(404)
                data = found[2]
                start = 0
                requested = _RANGE.match(self.headers.get("Range", ""))
                if requested:
                    start = int(requested.group(1))
                    if start >= len(data):
                        return self._plain(416, headers={"Content-Range": f"bytes */{len(data)}"})
                self._bytes(data, start, body, {"ETag": f'"{match["sha"]}"'}, partial=bool(requested))

            def _bytes(
                self, data: bytes, start: int, body: bool, headers: dict, partial: bool = False
            ) -> None:
                self.send_response(206 if partial else 200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Accept-Ranges", "bytes")
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                view = memoryview(data)[start:]
                step = 64 * 1024
                try:
                    for offset in range(0, len(view), step):
                        chunk = view[offset : offset + step]
                        self.wfile.write(chunk)
                        hub.count(len(chunk))
                        if hub.throttle:
                            time.sleep(hub.throttle)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler
