"""Which URLs and addresses a service may connect to on a user's behalf (pure: no I/O).

The gateway's fetcher (input images, tune files, job callbacks) and the HTTP API's callback relay judge
user URLs by this one policy.

Only globally routable addresses pass (no loopback, private, link-local, metadata, multicast or reserved
address, however it is spelled), unless the operator allow-listed the host or network
(``MULTIPASS_FETCH_ALLOW_HOSTS`` / ``_CIDRS``). The policy judges *resolved* addresses, which the fetcher
then connects to, so DNS rebinding cannot slip between check and connection (docs/RELIABILITY.md, "SSRF").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

from multipass.errors import echo

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance metadata endpoints (AWS/GCP/Azure/OpenStack share the IPv4 one; AWS's IPv6 one).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("169.254.170.2"),
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SHARED_CGNAT = ipaddress.ip_network("100.64.0.0/10")
MAX_URL_LENGTH = 2048
_LOOSE_IPV4_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(ValueError):
    """The URL or address may not be fetched; the message says why (safe to show the user)."""


@dataclass(frozen=True)
class Target:
    """A checked URL, split into what a connection needs."""

    url: str
    scheme: str
    #: Lower-case host name (IDNA ASCII) or the canonical form of an IP literal, without brackets.
    host: str
    port: int
    #: Path and query, as sent in the request line.
    path: str
    #: The IP address when the URL names one (in any notation), else None.
    literal_ip: IPAddress | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address of ``host`` read the way ``inet_aton`` (and so every resolver) reads it.

    ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` and ``127.0.0.1`` are all 127.0.0.1. None
    when ``host`` is not such a literal. Raises Refused for a numeric literal out of range.
    """
    parts = host.lower().split(".")
    if parts and parts[-1] == "":
        parts = parts[:-1]  # "127.0.0.1." is the same address
    if not parts or len(parts) > 4 or not all(_LOOSE_IPV4_PART.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if any(c not in "01234567" for c in part):
                raise Refused(f"host {echo(host)} is a malformed octal IPv4 literal")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        raise Refused(f"host {echo(host)} is an out-of-range IPv4 literal")
    number = 0
    for value in leading:
        number = number * 256 + value
    number = number * 256 ** (4 - len(leading)) + last
    return ipaddress.IPv4Address(number)


def parse_url(url: str, *, schemes: Sequence[str] = ("http", "https")) -> Target:
    """Split and check a URL's syntax: http(s), a host, no credentials, no control characters."""
    if not url:
        raise Refused("is empty")
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"is {len(url)} characters long; at most {MAX_URL_LENGTH} allowed")
    if _BAD_URL_CHARS.search(url):
        raise Refused("contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise Refused(f"is not a valid URL ({error})") from error
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise Refused(
            f"has scheme {echo(parts.scheme) if parts.scheme else 'none'}; only {'/'.join(schemes)} allowed"
        )
    if "@" in parts.netloc:
        raise Refused("carries credentials (user:password@); not allowed")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise Refused("has no host")
    if "%" in raw_host:
        zone = ":" in raw_host  # an IPv6 literal with a zone ("fe80::1%eth0"), else a percent-encoded name
        raise Refused(
            "names an IPv6 zone; not allowed" if zone else "has a percent-encoded host name; write it plainly"
        )
    port = port if port is not None else DEFAULT_PORTS[scheme]
    if port == 0:
        raise Refused("has port 0")
    literal: IPAddress | None = None
    if ":" in raw_host:
        try:
            literal = ipaddress.IPv6Address(raw_host)
        except ValueError as error:
            raise Refused(f"host {echo(raw_host)} is not a valid IPv6 address") from error
        host = str(literal)
    else:
        literal = parse_loose_ipv4(raw_host)
        if literal is not None:
            host = str(literal)
        else:
            try:
                host = raw_host.encode("idna").decode("ascii").lower().rstrip(".")
            except UnicodeError as error:
                raise Refused(f"host {echo(raw_host)} is not a valid host name") from error
            if not host or any(not label or len(label) > 63 for label in host.split(".")):
                raise Refused(f"host {echo(raw_host)} is not a valid host name")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, literal_ip=literal)


@dataclass(frozen=True)
class UrlPrefix:
    """A URL prefix an operator trusts (the HTTP API's callback relay): same scheme, host and port, and a
    path under its path. Compared on parsed URLs, so credentials, other ports or look-alike hosts never match."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        """Refused unless ``text`` is an http(s) URL with a path of its own and no query."""
        target = parse_url(text)
        if "?" in target.path or target.path in ("", "/"):
            raise Refused(
                "must be an http(s) URL with a path of its own (e.g. /astria/callbacks/prompt), no query"
            )
        return cls(target.scheme, target.host, target.port, target.path)

    def matches(self, target: Target) -> bool:
        """Same origin, and a path under the prefix's that has no ``.``/``..`` segment (also
        percent-encoded, or behind a backslash): a proxy in front of the trusted endpoint would resolve
        ``/astria/callbacks/prompt/../../other`` to another of its endpoints."""
        path = target.path.split("?", 1)[0]
        segments = unquote(path).replace("\\", "/").split("/")
        return (
            (target.scheme, target.host, target.port) == (self.scheme, self.host, self.port)
            and (path == self.path or path.startswith(self.path.rstrip("/") + "/"))
            and not any(segment in (".", "..") for segment in segments)
        )


def redirect_target(current: Target, location: str, *, schemes: Sequence[str] = ("http", "https")) -> Target:
    """The target of a redirect (relative or absolute ``Location``), checked like any user URL."""
    if not location:
        raise Refused("redirect without a Location header")
    return parse_url(urljoin(current.url, location), schemes=schemes)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched by default, or None when it is a public unicast address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = classify(address.ipv4_mapped)
            return f"an IPv4-mapped IPv6 address ({address.ipv4_mapped}{', ' + inner if inner else ''})"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = classify(embedded)
            if inner is not None:
                return f"an IPv6 address embedding {embedded}, {inner}"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_CGNAT:
        return "a carrier-grade NAT (shared) address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses pass; others only when their host or network is allow-listed."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    def _network_allows(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        for candidate in candidates:
            for network in self.allow_networks:
                if candidate.version != network.version or candidate not in network:
                    continue
                # A metadata endpoint passes only when listed on its own, never inside a broad range.
                if candidate in METADATA_ADDRESSES and network.num_addresses != 1:
                    continue
                return True
        return False

    def check_address(self, address: IPAddress, host: str = "") -> None:
        """Raise Refused unless ``address`` is public or allow-listed (by network, or by ``host``)."""
        reason = classify(address)
        if reason is None:
            return
        if host and host in self.allow_hosts and address not in METADATA_ADDRESSES:
            return
        if self._network_allows(address):
            return
        shown = f"{host} resolves to {address}" if host and host != str(address) else f"address {address}"
        raise Refused(f"{shown}, {reason}; refused")

    def check_resolved(self, target: Target, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """Every address the name resolved to must pass (a mixed answer is refused); returns them in order."""
        checked: list[IPAddress] = []
        for address in addresses:
            if address not in checked:
                self.check_address(address, target.host)
                checked.append(address)
        if not checked:
            raise Refused(f"host {target.host} does not resolve to any address")
        return checked
