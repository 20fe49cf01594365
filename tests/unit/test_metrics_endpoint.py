"""The /metrics endpoint every service opens: Prometheus' text format, filters, a close that frees the port."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from multipass.metrics_endpoint import POLL_SECONDS, MetricsEndpoint


def registry_with_counters() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("multipass_demo_jobs", "Jobs.", registry=registry).inc(3)
    Counter("multipass_demo_passes", "Passes.", registry=registry).inc(7)
    return registry


def scrape(port: int, path: str = "/metrics", host: str = "127.0.0.1", **headers: str) -> tuple[dict, bytes]:
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(response.headers), response.read()


def test_serves_the_registry_in_the_text_format_with_filters_and_gzip():
    endpoint = MetricsEndpoint.start(0, registry=registry_with_counters())
    try:
        headers, body = scrape(endpoint.port)
        assert headers["Content-Type"].startswith("text/plain")
        assert b"multipass_demo_jobs_total 3.0" in body and b"multipass_demo_passes_total 7.0" in body

        _, only = scrape(endpoint.port, "/metrics?name[]=multipass_demo_jobs_total")
        assert b"multipass_demo_jobs_total 3.0" in only and b"passes" not in only

        headers, packed = scrape(endpoint.port, **{"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip"
        assert b"multipass_demo_passes_total 7.0" in gzip.decompress(packed)
    finally:
        endpoint.close()


def test_close_stops_serving_frees_the_port_and_is_idempotent():
    endpoint = MetricsEndpoint.start(0)
    port = endpoint.port
    scrape(port)
    begun = time.monotonic()
    endpoint.close()
    closing = time.monotonic() - begun
    endpoint.close()
    with pytest.raises(OSError):
        scrape(port)
    again = MetricsEndpoint.start(port)  # the same port at once: the listening socket is gone
    try:
        assert again.port == port
        scrape(port)
    finally:
        again.close()
    assert closing < 10 * POLL_SECONDS + 1.0  # not a timing target: it returns, and not after a long poll


def test_ipv6_loopback_is_served_when_the_host_has_it():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        endpoint = MetricsEndpoint.start(0, "::1", registry=registry_with_counters())
    except OSError:
        pytest.skip("IPv6 loopback not configured")
    try:
        _, body = scrape(endpoint.port, host="[::1]")
        assert b"multipass_demo_jobs_total 3.0" in body
    finally:
        endpoint.close()
