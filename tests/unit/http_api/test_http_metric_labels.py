"""The HTTP metrics' labels stay bounded whatever clients send: routes by template, methods by name.

A client (or a scanner) that sends made-up methods (``FOOBAR123``, one per request) must not add a
series per method to ``multipass_http_requests_total`` and ``multipass_http_request_duration_seconds``.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from multipass_http_api.metrics import MetricsMiddleware


def app() -> FastAPI:
    served = FastAPI()

    @served.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict:
        return {"id": thing_id}

    served.add_middleware(MetricsMiddleware)
    return served


def label_values(label: str) -> set[str]:
    return {
        sample.labels[label]
        for metric in REGISTRY.collect()
        if metric.name in ("multipass_http_requests", "multipass_http_request_duration_seconds")
        for sample in metric.samples
        if label in sample.labels
    }


async def test_made_up_methods_share_one_label_value():
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v1/things/a1")).status_code == 200
        for n in range(5):
            await client.request(f"FOOBAR{n}", "/v1/things/a1")
            await client.request(f"SCAN{n}", f"/nowhere/{n}")
        await client.request("PROPFIND", "/v1/things/a1")
    methods = label_values("method")
    assert "GET" in methods and "other" in methods
    assert not any(m.startswith(("FOOBAR", "SCAN")) or m == "PROPFIND" for m in methods), methods
    routes = label_values("route")
    assert "/v1/things/{thing_id}" in routes
    assert not any("a1" in r or "nowhere" in r for r in routes), routes
