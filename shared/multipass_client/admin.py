"""Typed calls of the operator ``Admin`` service (tenants and API keys); needs the admin token."""

from __future__ import annotations

import grpc

from multipass.v1 import admin_pb2, admin_pb2_grpc

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
