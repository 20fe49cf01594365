"""``prompt[callback]``: the finished prompt object POSTed to the caller's URL, relayed through the gateway.

The gateway's own job callback does the hard part (durable: claimed on the job record, retried with
exponential backoff, outcome recorded in the job). A prompt with a callback is submitted with the gateway
``callback_url`` set to this service's relay endpoint, carrying the caller's URL as its ``url`` query
parameter. When the job ends the gateway POSTs the job, signed, to the relay; the relay checks the
signature, turns the job into the prompt object and POSTs ``{"prompt": {...}}`` to the caller's URL,
signed the same way (``X-Multipass-Signature: t=<unix time>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>``).
It answers the gateway 200 when the caller's server accepted it (2xx), 502 when another attempt may work
(a 5xx, 408, 425 or 429, a timeout, a refused connection: the gateway retries), and 422 when it cannot (a
4xx, or an address refused by the policy below: the gateway records the failure and stops).

The caller's URL is checked when the prompt is created and again before every delivery: http(s) only,
no credentials, and every address its host resolves to must be globally routable (no loopback, private,
link-local, metadata or reserved address, however it is spelled: IPv4-mapped, 6to4, NAT64, ...) unless the
operator allow-listed the host or network: the gateway's policy, :mod:`multipass.ssrf`. Plain
http connects to the address that was checked (no DNS rebinding between check and connection); https
connects by name and the certificate check binds the connection to that name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx

from multipass.callback_signing import SIGNATURE_HEADER, TENANT_HEADER, tenant_key
from multipass.callback_signing import sign as sign  # re-exported
from multipass.callback_signing import verify as verify  # re-exported: the relay's check
from multipass.errors import ConfigError, InvalidInput, Violation
from multipass.ssrf import AddressPolicy, Refused, parse_url

log = logging.getLogger(__name__)

#: Path of the relay endpoint the gateway POSTs finished jobs to.
RELAY_PATH = "/astria/callbacks/prompt"
_RETRY_STATUSES = frozenset({408, 425, 429})
FIELD = "prompt[callback]"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CallbackSettings:
    #: URL at which the gateway reaches this service's relay endpoint (path included); empty = the
    #: service's own listening address with :data:`RELAY_PATH`.
    relay_url: str = ""
    #: The gateway's ``MULTIPASS_CALLBACK_SIGNING_KEY``: checks the gateway's relay requests and signs
    #: what is sent on. Empty disables ``prompt[callback]``.
    signing_key: str = ""
    #: Hosts and networks exempt from the refusal of internal addresses.
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    #: Deadline of one POST to the caller (keep it under the gateway's MULTIPASS_CALLBACK_TIMEOUT_SECONDS).
    timeout_seconds: float = 8.0

    def __repr__(self) -> str:
        return (
            f"CallbackSettings(relay_url={self.relay_url!r}, signing_key={'***' if self.signing_key else ''!r}, "
            f"allow_hosts={sorted(self.allow_hosts)!r}, allow_networks={self.allow_networks!r}, "
            f"timeout_seconds={self.timeout_seconds!r})"
        )


def relayed_tenant_key(settings: CallbackSettings, headers, body: bytes) -> tuple[str, str] | None:
    """(tenant, its callback key) of a callback the gateway relays here, when its signature is valid under
    that tenant's key; None otherwise (no secret here, no tenant named, or a bad or relabelled signature)."""
    tenant = headers.get(TENANT_HEADER, "")
    key = tenant_key(settings.signing_key, tenant) if tenant else ""
    return (tenant, key) if key and verify(headers.get(SIGNATURE_HEADER, ""), body, key) else None


def relay_url(base: str, target: str) -> str:
    """The gateway ``callback_url`` of a prompt whose caller wants ``target`` called."""
    return f"{base}?{urlencode({'url': target})}"


def target_of(callback_url: str) -> str | None:
    """The caller's URL inside a relay URL; None for any other callback URL (or none)."""
    if not callback_url:
        return None
    parts = urlsplit(callback_url)
    if not parts.path.endswith(RELAY_PATH):
        return None
    values = parse_qs(parts.query).get("url", [])
    return values[0] if len(values) == 1 else None


@dataclass(frozen=True)
class CheckedTarget:
    url: str
    #: Where to connect: the URL itself (https) or the URL with the checked address as host (http).
    connect_url: str
    host_header: str


def _refused(description: str) -> InvalidInput:
    return InvalidInput.of([Violation(FIELD, description)])


def _policy(settings: CallbackSettings) -> AddressPolicy:
    """The address policy the gateway applies to user URLs, with this service's allow-lists."""
    return AddressPolicy(allow_hosts=settings.allow_hosts, allow_networks=settings.allow_networks)


async def check_target(url: str, settings: CallbackSettings) -> CheckedTarget:
    """The URL checked against the address policy; InvalidInput on ``prompt[callback]`` saying why not."""
    try:
        target = parse_url(url)
    except Refused as error:
        raise _refused(str(error)) from error
    if target.literal_ip is not None:
        addresses = [target.literal_ip]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as error:
            raise _refused(f"host {target.host!r} does not resolve") from error
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    try:
        checked = _policy(settings).check_resolved(target, addresses)
    except Refused as error:
        raise _refused(str(error)) from error
    parts = urlsplit(url)
    if target.scheme == "https":
        return CheckedTarget(url, url, parts.netloc)
    address = checked[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    connect = urlunsplit(("http", f"{literal}:{target.port}", parts.path or "/", parts.query, ""))
    return CheckedTarget(url, connect, parts.netloc)


@dataclass(frozen=True)
class Delivery:
    """How one relayed delivery went: what to answer the gateway, and why."""

    #: 200 delivered; 502 retry later; 422 give up.
    relay_status: int
    outcome: str


def _retriable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUSES


async def deliver(
    entity: dict,
    target: str,
    settings: CallbackSettings,
    *,
    key: str,
    job_id: str = "",
    tune_id: str = "",
    attempt: str = "",
) -> Delivery:
    """POST ``{"prompt": entity}`` (or ``{"tune": entity}`` with ``tune_id``) to ``target``, signed with the
    tenant's callback key ``key``; never raises for the caller's server's faults."""
    kind = "tune" if tune_id else "prompt"
    try:
        checked = await check_target(target, settings)
    except InvalidInput as error:
        return Delivery(422, error.violations[0].description)
    body = json.dumps({kind: entity}, separators=(",", ":")).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "Host": checked.host_header,
        SIGNATURE_HEADER: sign(body, key, int(time.time())),
        "User-Agent": "multipass-http-api",
    }
    if tune_id:
        headers["X-Multipass-Tune-Id"] = tune_id
    else:
        headers["X-Multipass-Job-Id"] = job_id
    about = {"tune_id": tune_id} if tune_id else {"job_id": job_id}
    if attempt:
        headers["X-Multipass-Attempt"] = attempt
    try:
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=settings.timeout_seconds
        ) as client:
            response = await client.post(checked.connect_url, content=body, headers=headers)
    except httpx.HTTPError as error:
        reason = f"{type(error).__name__}: {error}"[:300]
        log.warning("callback failed", extra={"kind": kind, **about, "reason": reason})
        return Delivery(502, reason)
    if 200 <= response.status_code < 300:
        log.info("callback delivered", extra={"kind": kind, **about, "status": response.status_code})
        return Delivery(200, f"HTTP {response.status_code}")
    status = 502 if _retriable(response.status_code) else 422
    log.warning("callback refused", extra={"kind": kind, **about, "status": response.status_code})
    return Delivery(status, f"HTTP {response.status_code}")


def settings_from_env(env) -> CallbackSettings:
    """``MULTIPASS_HTTP_CALLBACK_*`` and the shared ``MULTIPASS_CALLBACK_SIGNING_KEY`` (an ``EnvReader``)."""
    relay = env.str("HTTP_CALLBACK_RELAY_URL", "")
    if relay:
        relay = env.url("HTTP_CALLBACK_RELAY_URL", "", schemes=("http", "https"))
    hosts = {host.lower() for host in env.csv("HTTP_CALLBACK_ALLOW_HOSTS")}
    networks: list[IPNetwork] = []
    for entry in env.csv("HTTP_CALLBACK_ALLOW_CIDRS"):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise ConfigError(
                "bad configuration: MULTIPASS_HTTP_CALLBACK_ALLOW_CIDRS",
                violations=[Violation("MULTIPASS_HTTP_CALLBACK_ALLOW_CIDRS", f"{entry!r} is not a network")],
            ) from error
    return CallbackSettings(
        relay_url=relay,
        signing_key=env.str("CALLBACK_SIGNING_KEY", ""),
        allow_hosts=frozenset(hosts),
        allow_networks=tuple(networks),
        timeout_seconds=env.float("HTTP_CALLBACK_TIMEOUT_SECONDS", 8.0, min=0.5, max=120.0),
    )
