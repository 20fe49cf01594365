"""HTTP(S) requests to user-supplied URLs under the address policy of :mod:`multipass.ssrf`.

Each request resolves the host once, checks every address, and connects to a checked address with the
original host name in ``Host`` and in TLS SNI/certificate verification, so a second DNS answer cannot
redirect the connection (no rebinding). Redirects are followed by hand, at most ``max_redirects`` times,
and each hop is checked again. Bodies are read in chunks with a byte cap and an overall deadline;
compressed bodies are refused rather than inflated.

The blocking urllib3 calls run in a worker thread; the asyncio loop never waits on a socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError

from multipass.ssrf import (
    AddressPolicy,
    IPAddress,
    Refused,
    Target,
    UrlPrefix,
    parse_url,
    redirect_target,
)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
USER_AGENT = "multipass-gateway/1"
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class FetchError(Exception):
    """A request did not succeed; ``permanent`` when retrying cannot help (refused URL, 4xx, too large);
    ``too_large`` when the response had more bytes than allowed."""

    def __init__(self, reason: str, *, permanent: bool, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.too_large = too_large


@dataclass(frozen=True)
class Fetched:
    data: bytes
    url: str
    content_type: str


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    data: bytes


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (A and AAAA), through the system resolver."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FetchError(f"host {host} does not resolve ({error.strerror})", permanent=True) from error
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class SafeHttp:
    """Fetches and posts to user URLs; every connection goes to an address the policy allowed."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver = system_resolve,
        user_agent: str = USER_AGENT,
        trusted_callbacks: tuple[UrlPrefix, ...] = (),
    ):
        self.policy = policy
        self._resolve = resolver
        self._user_agent = user_agent
        #: Callback URLs under these prefixes are posted to whatever their host resolves to (the HTTP
        #: API's relay, which checks the caller's URL itself); never used for fetching.
        self._trusted_callbacks = trusted_callbacks

    async def check_url(self, url: str) -> Target:
        """Syntax and address checks without sending anything (SubmitJob checks callback URLs this way)."""
        target = _parse(url)
        await self._address(target, trusted=self._trusted(target))
        return target

    def _trusted(self, target: Target) -> bool:
        return any(prefix.matches(target) for prefix in self._trusted_callbacks)

    async def _address(self, target: Target, *, trusted: bool = False) -> IPAddress:
        try:
            if target.literal_ip is not None:
                if not trusted:
                    self.policy.check_address(target.literal_ip)
                return target.literal_ip
            addresses = await self._resolve(target.host, target.port)
            if trusted:
                if not addresses:
                    raise Refused(f"host {target.host} does not resolve to any address")
                return addresses[0]
            return self.policy.check_resolved(target, addresses)[0]
        except Refused as error:
            raise FetchError(str(error), permanent=True) from error

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout: float,
        max_redirects: int = 3,
        sink: Callable[[bytes], None] | None = None,
    ) -> Fetched:
        """GET ``url`` (following checked redirects); the body, at most ``max_bytes``, within ``timeout`` s.

        With ``sink``, the body of the final answer goes to it chunk by chunk (called on a worker thread;
        a large file never sits in memory) and ``Fetched.data`` is empty.
        """
        deadline = time.monotonic() + timeout
        target = _parse(url)
        for _hop in range(max_redirects + 1):
            address = await self._address(target)
            response = await asyncio.to_thread(
                _request,
                address,
                target,
                "GET",
                None,
                self._headers({"Accept": "*/*"}),
                deadline,
                max_bytes,
                sink,
            )
            if response.status in _REDIRECTS:
                try:
                    target = redirect_target(target, response.headers.get("location", ""))
                except Refused as error:
                    raise FetchError(f"redirect refused: {error}", permanent=True) from error
                continue
            if response.status != 200:
                raise FetchError(
                    f"{target.url} answered HTTP {response.status}", permanent=400 <= response.status < 500
                )
            return Fetched(response.data, target.url, response.headers.get("content-type", ""))
        raise FetchError(f"more than {max_redirects} redirects", permanent=True)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
        """POST ``body``; returns the status (redirects are not followed: a 3xx is the answer)."""
        deadline = time.monotonic() + timeout
        target = _parse(url)
        address = await self._address(target, trusted=self._trusted(target))
        response = await asyncio.to_thread(
            _request, address, target, "POST", body, self._headers(dict(headers)), deadline, 64 * 1024
        )
        return response.status

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {"User-Agent": self._user_agent, "Accept-Encoding": "identity", **extra}


def _parse(url: str) -> Target:
    try:
        return parse_url(url)
    except Refused as error:
        raise FetchError(f"URL {error}", permanent=True) from error


def _request(
    address: IPAddress,
    target: Target,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    deadline: float,
    max_bytes: int,
    sink: Callable[[bytes], None] | None = None,
) -> _Response:
    """One request to ``address`` (blocking; runs in a worker thread); a 200 answer's body goes to
    ``sink`` when one is given."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("timed out", permanent=False)
    timeout = urllib3.Timeout(connect=remaining, read=remaining)
    options: dict[str, object] = {"timeout": timeout, "retries": False, "maxsize": 1, "block": False}
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(str(address), target.port, **options)
    try:
        response = pool.urlopen(
            method,
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=False,
        )
        try:
            response_headers = {k.lower(): v for k, v in response.headers.items()}
            if response.status in _REDIRECTS or method == "POST":
                return _Response(response.status, response_headers, b"")
            encoding = response_headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchError(f"response is {encoding}-encoded; only identity is accepted", permanent=True)
            length = response_headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise FetchError(
                    f"response is {int(length)} bytes; at most {max_bytes} allowed",
                    permanent=True,
                    too_large=True,
                )
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise FetchError("timed out while reading the response", permanent=False)
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(
                        f"response is larger than {max_bytes} bytes", permanent=True, too_large=True
                    )
                if sink is not None and response.status == 200:
                    sink(chunk)
                else:
                    chunks.append(chunk)
            return _Response(response.status, response_headers, b"".join(chunks))
        finally:
            response.release_conn()
            response.close()
    except FetchError:
        raise
    except (HTTPError, OSError) as error:
        raise FetchError(
            f"could not reach {target.host}:{target.port} ({type(error).__name__})", permanent=False
        ) from error
    finally:
        pool.close()
