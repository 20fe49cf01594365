"""Typed calls of the operator ``Admin`` service (tenants and API keys); needs the admin token."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from multipass.v1 import admin_pb2, admin_pb2_grpc
from multipass_client.paging import pages

#: Metadata key carrying the operator credential (the gateway's ``MULTIPASS_ADMIN_TOKEN``).
ADMIN_TOKEN_HEADER = "x-multipass-admin-token"


class AdminClient:
    def __init__(self, channel: grpc.Channel, *, timeout: float = 30.0):
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._timeout = timeout

    def create_tenant(self, name: str) -> admin_pb2.CreateTenantResponse:
        return self._stub.CreateTenant(admin_pb2.CreateTenantRequest(name=name), timeout=self._timeout)

    def revoke_key(self, key_id: str) -> admin_pb2.RevokeKeyResponse:
        return self._stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=key_id), timeout=self._timeout)

    def create_key(self, tenant: str) -> admin_pb2.CreateKeyResponse:
        return self._stub.CreateKey(admin_pb2.CreateKeyRequest(tenant=tenant), timeout=self._timeout)

    def list_tenants(self, page_size: int = 0) -> Iterator[admin_pb2.TenantSummary]:
        """Every tenant, oldest first (the pages fetched as they are used)."""
        for page in pages(
            lambda token: self._stub.ListTenants(
                admin_pb2.ListTenantsRequest(page_size=page_size, page_token=token), timeout=self._timeout
            )
        ):
            yield from page.tenants

    def list_keys(self, tenant: str) -> list[admin_pb2.ApiKeySummary]:
        return list(self._stub.ListKeys(admin_pb2.ListKeysRequest(tenant=tenant), timeout=self._timeout).keys)

    def delete_tenant(self, tenant: str, *, timeout: float | None = None) -> admin_pb2.DeleteTenantResponse:
        """Remove the tenant and everything it owns (see the rpc); takes a few seconds at least."""
        return self._stub.DeleteTenant(
            admin_pb2.DeleteTenantRequest(tenant=tenant), timeout=timeout or max(self._timeout, 120.0)
        )

    def set_tenant_limits(
        self, tenant: str, *, max_pending_passes: int = 0, max_uploads: int = 0, max_passes_in_flight: int = 0
    ) -> admin_pb2.TenantSummary:
        """Replace the tenant's own quotas as a whole (0 = the gateway's setting)."""
        limits = admin_pb2.TenantLimits(
            max_pending_passes=max_pending_passes,
            max_uploads=max_uploads,
            max_passes_in_flight=max_passes_in_flight,
        )
        return self._stub.SetTenantLimits(
            admin_pb2.SetTenantLimitsRequest(tenant=tenant, limits=limits), timeout=self._timeout
        )
