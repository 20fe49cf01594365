"""The body limit: every client reads a clean JSON 413, the application never receives more than the
limit, and a refused body is discarded only up to its allowance (uvicorn on loopback, and the middleware
driven directly for what a socket cannot show)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from multipass_http_api.body_limit import BodyLimitMiddleware
from multipass_http_api.errors import install_error_handlers

LIMIT = 16 * 1024


def multipart_upload(size: int) -> dict:
    return {"prompt[input_image]": ("photo.png", b"\x89PNG" + b"a" * size, "image/png")}


def form_app(seen: list[int]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        form = await request.form()
        sizes = {key: len(await value.read()) for key, value in form.multi_items() if hasattr(value, "read")}
        seen.append(sum(sizes.values()))
        return {"sizes": sizes}

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=LIMIT)
    return app


@pytest.fixture(name="served")
async def served_fixture() -> AsyncIterator[tuple[str, list[int]]]:
    """The form application behind uvicorn on a loopback port, and the upload sizes its route saw."""
    seen: list[int] = []
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(form_app(seen), log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        server.should_exit = True
        await task


def assert_clean_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == f"request body larger than {LIMIT} bytes"
    assert body["errors"] == {"body": [f"at most {LIMIT} bytes allowed"]}


async def test_a_multipart_upload_over_the_limit_reads_as_413_and_the_connection_stays_usable(served):
    url, seen = served
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for size in (LIMIT + 1, 3 * LIMIT):
            assert_clean_413(await client.post("/upload", files=multipart_upload(size)))
        # The refused body was read to its end, so the same connection carries the next request.
        fine = await client.post("/upload", files=multipart_upload(1000))
    assert fine.status_code == 200 and fine.json()["sizes"] == {"prompt[input_image]": 1004}
    assert seen == [1004]


async def test_a_chunked_multipart_upload_is_refused_where_it_crosses_the_limit(served):
    url, seen = served

    async def chunks():
        yield b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(8):
            yield b"a" * 4096
        yield b"\r\n--xyz--\r\n"

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post(
            "/upload", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
        )
    assert "content-length" not in response.request.headers
    assert_clean_413(response)
    assert seen == []


async def test_a_client_waiting_for_100_continue_gets_413_without_sending_its_body(served):
    url, seen = served
    port = int(url.rpartition(":")[2])

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 40000\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
            return answer

    answer = await asyncio.to_thread(exchange)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in head
    assert b"connection: close" in head.lower()
    assert body.startswith(b'{"error": "request body larger than 16384 bytes"')
    assert seen == []


class ScriptedClient:
    """An ASGI ``receive`` handing out ``chunks`` (then waiting forever) and a ``send`` recording."""

    def __init__(self, chunks: list[bytes], *, ends: bool = True):
        self.chunks = list(chunks)
        self.ends = ends
        self.taken = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if not self.chunks:
            await asyncio.Event().wait()
        self.taken += 1
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or not self.ends}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])


def reading_app(got: list[int]):
    """An ASGI application that reads the whole body, recording how many bytes it was handed."""

    async def app(scope, receive, send) -> None:
        while True:
            message = await receive()
            got.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def http_scope(headers: list[tuple[bytes, bytes]] = ()) -> dict:
    return {"type": "http", "method": "POST", "path": "/upload", "headers": list(headers)}


async def test_the_application_never_receives_more_than_the_limit():
    got: list[int] = []
    middleware = BodyLimitMiddleware(reading_app(got), max_body_bytes=LIMIT)
    client = ScriptedClient([b"a" * 5000] * 10)
    await middleware(http_scope(), client.receive, client.send)
    assert client.status == 413
    assert sum(got) <= LIMIT and got == [5000, 5000, 5000]
    # The rest was discarded to the end, so the connection may carry the next request.
    assert client.taken == 10 and b"connection" not in client.headers


async def test_a_refused_body_is_discarded_only_up_to_its_allowance_then_the_connection_closes():
    got: list[int] = []
    middleware = BodyLimitMiddleware(reading_app(got), max_body_bytes=LIMIT, drain_factor=2)
    client = ScriptedClient([b"a" * 4096] * 100)
    await middleware(http_scope(), client.receive, client.send)
    assert client.status == 413 and client.headers[b"connection"] == b"close"
    assert 4096 * client.taken <= 2 * LIMIT + 4096 and client.taken < 100

    declared = ScriptedClient([b"a" * 4096] * 100)
    headers = [(b"content-length", str(3 * LIMIT).encode())]
    await middleware(http_scope(headers), declared.receive, declared.send)
    assert declared.status == 413 and declared.taken == 0 and got == [4096] * 4
    assert declared.headers[b"connection"] == b"close"


async def test_a_declared_body_within_the_allowance_is_discarded_before_the_answer():
    got: list[int] = []
    middleware = BodyLimitMiddleware(reading_app(got), max_body_bytes=LIMIT)
    client = ScriptedClient([b"a" * 4096] * 5)
    headers = [(b"content-length", str(5 * 4096).encode())]
    await middleware(http_scope(headers), client.receive, client.send)
    assert client.status == 413 and client.taken == 5 and got == []
    assert b"connection" not in client.headers


async def test_a_client_trickling_a_refused_body_is_answered_after_the_drain_time():
    middleware = BodyLimitMiddleware(reading_app([]), max_body_bytes=LIMIT, drain_seconds=0.05)
    client = ScriptedClient([b"a" * (LIMIT + 1)], ends=False)
    await asyncio.wait_for(middleware(http_scope(), client.receive, client.send), timeout=5)
    assert client.status == 413 and client.headers[b"connection"] == b"close"


async def test_a_body_within_the_limit_passes_unchanged():
    got: list[int] = []
    middleware = BodyLimitMiddleware(reading_app(got), max_body_bytes=LIMIT)
    client = ScriptedClient([b"a" * 8000, b"a" * 8000])
    await middleware(http_scope([(b"content-length", b"16000")]), client.receive, client.send)
    assert client.status == 200 and got == [8000, 8000]
