"""Health probes for supervised processes: gRPC health checking, an HTTP GET, or a TCP connect.

A probe is plain data (kind + target), so the supervisor can run it while it waits for a process and
``multipass status`` can run it again later from what ``stack.json`` recorded.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

PROBE_KINDS = ("grpc", "http", "tcp")


@dataclass(frozen=True)
class HealthProbe:
    """``grpc``: target ``host:port``, healthy when ``grpc.health.v1.Health/Check("")`` answers SERVING.
    ``http``: target a URL, healthy on a 2xx answer. ``tcp``: target ``host:port``, healthy when it accepts."""

    kind: str
    target: str

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe kind {self.kind!r} is not one of {', '.join(PROBE_KINDS)}")

    def check(self, timeout: float = 1.0) -> bool:
        """True when the process answers healthy within ``timeout`` seconds; never raises."""
        try:
            if self.kind == "grpc":
                return grpc_serving(self.target, timeout)
            if self.kind == "http":
                return http_ok(self.target, timeout)
            return tcp_open(self.target, timeout)
        except Exception:  # noqa: BLE001 - a probe answers yes or no, whatever went wrong
            return False

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> HealthProbe:
        return cls(kind=data["kind"], target=data["target"])


def grpc_serving(address: str, timeout: float = 1.0, service: str = "") -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs we built
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tcp_open(address: str, timeout: float = 1.0) -> bool:
    parsed = urlparse(f"//{address}")
    if parsed.hostname is None or parsed.port is None:
        return False
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            return True
    except OSError:
        return False
