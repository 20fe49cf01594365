"""The safe fetcher against loopback HTTP servers: connects to the checked address, re-checks
redirects, caps sizes, refuses compressed bodies, resolves once per hop."""

from __future__ import annotations

import gzip
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from multipass.ssrf import AddressPolicy, Refused, UrlPrefix
from multipass_gateway.infra.fetch import FetchError, SafeHttp

LOOPBACK = ipaddress.ip_address("127.0.0.1")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


class Server:
    def __init__(self):
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                port = owner.port
                routes = {
                    "/image.png": (200, {"Content-Type": "image/png"}, PNG),
                    "/hop": (302, {"Location": "/image.png"}, b""),
                    "/to-private": (302, {"Location": "http://10.1.2.3/x"}, b""),
                    "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
                    "/loop": (302, {"Location": f"http://images.test:{port}/loop"}, b""),
                    "/big": (200, {"Content-Length": str(10_000)}, b"x" * 10_000),
                    "/gzip": (200, {"Content-Encoding": "gzip"}, gzip.compress(b"\x00" * 100_000)),
                    "/missing": (404, {}, b"nope"),
                }
                status, headers, body = routes.get(self.path, (500, {}, b""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "images.test") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


class Resolver:
    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int):
        self.calls.append(host)
        return [ipaddress.ip_address(a) for a in self.answers[host]]


def http(resolver: Resolver, allow: bool = True) -> SafeHttp:
    networks = (ipaddress.ip_network("127.0.0.1/32"),) if allow else ()
    return SafeHttp(AddressPolicy(allow_networks=networks), resolver=resolver)


async def test_fetch_connects_to_the_checked_address_with_the_original_host(server):
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    fetched = await http(resolver).fetch(server.url("/hop"), max_bytes=1000, timeout=5)
    assert fetched.data == PNG and fetched.url == server.url("/image.png")
    assert [path for path, _ in server.requests] == ["/hop", "/image.png"]
    assert all(headers["host"] == f"images.test:{server.port}" for _, headers in server.requests)
    assert server.requests[0][1]["accept-encoding"] == "identity"
    assert resolver.calls == ["images.test", "images.test"]  # once per hop


async def test_loopback_is_refused_unless_allow_listed(server):
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    with pytest.raises(FetchError, match="loopback") as caught:
        await http(resolver, allow=False).fetch(server.url("/image.png"), max_bytes=1000, timeout=5)
    assert caught.value.permanent and not server.requests


async def test_a_mixed_dns_answer_is_refused(server):
    resolver = Resolver({"images.test": ["93.184.216.34", "10.0.0.8"]})
    with pytest.raises(FetchError, match="10.0.0.8, a private address"):
        await http(resolver).fetch(server.url("/image.png"), max_bytes=1000, timeout=5)
    assert not server.requests


async def test_redirects_are_checked_and_bounded(server):
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    with pytest.raises(FetchError, match="10.1.2.3, a private address"):
        await http(resolver).fetch(server.url("/to-private"), max_bytes=1000, timeout=5)
    with pytest.raises(FetchError, match="redirect refused: .*scheme"):
        await http(resolver).fetch(server.url("/to-file"), max_bytes=1000, timeout=5)
    server.requests.clear()
    with pytest.raises(FetchError, match="more than 2 redirects"):
        await http(resolver).fetch(server.url("/loop"), max_bytes=1000, timeout=5, max_redirects=2)
    assert len(server.requests) == 3


async def test_size_cap_compression_and_status(server):
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    with pytest.raises(FetchError, match="10000 bytes; at most 1000"):
        await http(resolver).fetch(server.url("/big"), max_bytes=1000, timeout=5)
    with pytest.raises(FetchError, match="gzip-encoded"):
        await http(resolver).fetch(server.url("/gzip"), max_bytes=10_000_000, timeout=5)
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        await http(resolver).fetch(server.url("/missing"), max_bytes=1000, timeout=5)
    assert caught.value.permanent


async def test_unreachable_port_is_a_transient_failure():
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    with pytest.raises(FetchError) as caught:
        await http(resolver).fetch("http://images.test:1/x", max_bytes=1000, timeout=2)
    assert not caught.value.permanent


async def test_decimal_literal_never_resolves_and_is_refused():
    resolver = Resolver({})
    with pytest.raises(FetchError, match="loopback"):
        await http(resolver, allow=False).fetch("http://2130706433/x", max_bytes=10, timeout=1)
    assert resolver.calls == []


async def test_a_trusted_callback_prefix_is_posted_to_on_loopback_and_nothing_else_is(server):
    """The HTTP API's relay endpoint (configured as a trusted prefix) may be on loopback; the exemption is
    for that exact scheme, host, port and path, for callbacks only, never for fetching."""
    resolver = Resolver({"relay.test": ["127.0.0.1"], "images.test": ["127.0.0.1"]})
    relay = UrlPrefix.parse(server.url("/astria/callbacks/prompt", host="relay.test"))
    safe = SafeHttp(AddressPolicy(), resolver=resolver, trusted_callbacks=(relay,))
    hook = server.url("/astria/callbacks/prompt?url=https%3A%2F%2Fexample.com", host="relay.test")
    await safe.check_url(hook)
    assert await safe.post(hook, b"{}", {"Content-Type": "application/json"}, timeout=5) == 200
    assert server.requests[-1][0].startswith("/astria/callbacks/prompt?url=")
    for other in (
        server.url("/astria/callbacks/promptx", host="relay.test"),  # another path
        server.url("/other", host="relay.test"),
        server.url("/astria/callbacks/prompt", host="images.test"),  # another host
        f"http://relay.test:{server.port + 1}/astria/callbacks/prompt",  # another port
        f"https://relay.test:{server.port}/astria/callbacks/prompt",  # another scheme
        # out of the prefix's path through dot segments, which a proxy in front of the relay resolves
        server.url("/astria/callbacks/prompt/../../../v1/jobs", host="relay.test"),
        server.url("/astria/callbacks/prompt/%2e%2e/%2E%2E/other", host="relay.test"),
        server.url("/astria/callbacks/prompt/..%5c..%5cother", host="relay.test"),
        server.url("/astria/callbacks/prompt/./x", host="relay.test"),
    ):
        with pytest.raises(FetchError, match="loopback"):
            await safe.check_url(other)
    with pytest.raises(FetchError, match="loopback"):  # fetching never uses the exemption
        await safe.fetch(hook, max_bytes=1000, timeout=5)
    for bad in ("http://relay.test:1/", "ftp://relay.test/x", "http://relay.test/x?y=1"):
        with pytest.raises(Refused):
            UrlPrefix.parse(bad)
