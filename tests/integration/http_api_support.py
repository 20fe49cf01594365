"""The HTTP service on a loopback port in front of the gateway's integration stack (gateway_support):
real gateway, nats-server, S3, parser and segmentation, a fake diffusion worker."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import Stack

from multipass_http_api.server import HttpApiHandle, serve
from multipass_http_api.settings import HttpApiSettings


@dataclasses.dataclass
class HttpApi:
    """The running HTTP service, the stack behind it, and a tenant's API key."""

    handle: HttpApiHandle
    stack: Stack
    key: str
    tenant: str

    @property
    def url(self) -> str:
        return self.handle.url

    def client(self, key: str | None = None, **kwargs) -> httpx.AsyncClient:
        """An HTTP client of the service, authenticated with ``key`` (the tenant's by default; "" for none)."""
        key = self.key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


async def start_http_api(stack: Stack, **overrides) -> HttpApiHandle:
    values = dict(
        http_addr="127.0.0.1:0",
        gateway_target=stack.gateway.address,
        metrics_port=0,
        s3=stack.s3_settings,
        sse_heartbeat_seconds=0.2,
    )
    values.update(overrides)
    return await serve(HttpApiSettings(**values))


@pytest.fixture(name="http_api_overrides")
def http_api_overrides_fixture() -> dict:
    """Settings of the HTTP service a test changes (override this fixture)."""
    return {}


@pytest.fixture(name="http_api")
async def http_api_fixture(stack: Stack, http_api_overrides: dict) -> AsyncIterator[HttpApi]:
    await stack.start_gateway()
    tenant = await stack.tenant("acme")
    handle = await start_http_api(stack, **http_api_overrides)
    try:
        yield HttpApi(handle=handle, stack=stack, key=tenant.api_key, tenant=tenant.tenant)
    finally:
        await handle.stop(1.0)
