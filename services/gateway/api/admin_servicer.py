"""The operator ``multipass.v1.Admin`` servicer, guarded by MULTIPASS_ADMIN_TOKEN (constant-time compare)."""

from __future__ import annotations

from multipass.errors import PermissionDenied, Reason, Unauthenticated
from multipass.v1 import admin_pb2, admin_pb2_grpc
from multipass_gateway.api import auth
from multipass_gateway.infra.tenant_store import TenantStore

SERVICE_NAME = "multipass.v1.Admin"


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, tenants: TenantStore, admin_token: str):
        self.tenants = tenants
        self._token = admin_token

    def _guard(self, context) -> None:
        if not self._token:
            raise PermissionDenied(
                "the admin API is disabled on this gateway (MULTIPASS_ADMIN_TOKEN is not set)",
                reason=Reason.ADMIN_API_DISABLED,
            )
        if not auth.admin_token_matches(context.invocation_metadata(), self._token):
            raise Unauthenticated(
                f"missing or wrong admin token (send it as '{auth.ADMIN_TOKEN_HEADER}')",
                reason=Reason.ADMIN_TOKEN_INVALID,
            )

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context
    ) -> admin_pb2.CreateTenantResponse:
        self._guard(context)
        issued = await self.tenants.create_tenant(request.name)
        return admin_pb2.CreateTenantResponse(
            tenant=issued.tenant, api_key=issued.api_key, key_id=issued.key_id
        )

    async def CreateKey(self, request: admin_pb2.CreateKeyRequest, context) -> admin_pb2.CreateKeyResponse:
        self._guard(context)
        issued = await self.tenants.create_key(request.tenant)
        return admin_pb2.CreateKeyResponse(tenant=issued.tenant, api_key=issued.api_key, key_id=issued.key_id)

    async def RevokeKey(self, request: admin_pb2.RevokeKeyRequest, context) -> admin_pb2.RevokeKeyResponse:
        self._guard(context)
        return admin_pb2.RevokeKeyResponse(revoked=await self.tenants.revoke(request.key_id))
