"""The HTTP service's probes: ``/healthz`` while the process answers, ``/readyz`` only while the gateway
behind it serves (Kubernetes' readiness probe, so a pod cut off from its gateway takes no traffic)."""

from __future__ import annotations

from gateway_support import (  # noqa: F401 - fixtures
    capabilities_fixture,
    segmentation_models_fixture,
    stack_fixture,
)
from http_api_support import http_api_fixture, http_api_overrides_fixture  # noqa: F401 - fixtures


async def test_ready_only_while_the_gateway_serves(http_api):
    async with http_api.client("") as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
        address = http_api.stack.gateway.address
        await http_api.stack.stop_gateway()
        unready = await client.get("/readyz")
        assert unready.status_code == 503
        assert unready.json()["status"] == "not ready"
        assert unready.json()["reason"].startswith(f"the gateway at {address}")
        assert (await client.get("/healthz")).status_code == 200  # alive: no restart for it
