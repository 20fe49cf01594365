"""The operator ``multipass.v1.Admin`` servicer, guarded by MULTIPASS_ADMIN_TOKEN (constant-time compare).

Every call that changes tenants or keys, and every call refused for its admin token, leaves an audit
record on the logger ``multipass_gateway.audit``: the action, the caller's address and the ids concerned
(never a key).
"""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from multipass.errors import PermissionDenied, Reason, Unauthenticated
from multipass.v1 import admin_pb2, admin_pb2_grpc
from multipass_gateway.api import auth
from multipass_gateway.app.tenant_removal import TenantRemoval
from multipass_gateway.infra.tenant_limits import TenantLimits
from multipass_gateway.infra.tenant_store import KeySummary, TenantStore, TenantSummary

SERVICE_NAME = "multipass.v1.Admin"
audit = logging.getLogger("multipass_gateway.audit")


def _audit(context, action: str, **ids) -> None:
    audit.info(f"admin {action}", extra={"action": action, "peer": context.peer(), **ids})


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, tenants: TenantStore, admin_token: str, removal: TenantRemoval):
        self.tenants = tenants
        self.removal = removal
        self._token = admin_token

    def _guard(self, context, action: str) -> None:
        if not self._token:
            raise PermissionDenied(
                "the admin API is disabled on this gateway (MULTIPASS_ADMIN_TOKEN is not set)",
                reason=Reason.ADMIN_API_DISABLED,
            )
        if not auth.admin_token_matches(context.invocation_metadata(), self._token):
            audit.warning(
                f"admin {action} refused: missing or wrong admin token",
                extra={"action": action, "peer": context.peer(), "outcome": "refused"},
            )
            raise Unauthenticated(
                f"missing or wrong admin token (send it as '{auth.ADMIN_TOKEN_HEADER}')",
                reason=Reason.ADMIN_TOKEN_INVALID,
            )

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context
    ) -> admin_pb2.CreateTenantResponse:
        self._guard(context, "tenant.create")
        issued = await self.tenants.create_tenant(request.name)
        _audit(context, "tenant.create", tenant=issued.tenant, key_id=issued.key_id)
        return admin_pb2.CreateTenantResponse(
            tenant=issued.tenant, api_key=issued.api_key, key_id=issued.key_id
        )

    async def CreateKey(self, request: admin_pb2.CreateKeyRequest, context) -> admin_pb2.CreateKeyResponse:
        self._guard(context, "key.create")
        issued = await self.tenants.create_key(request.tenant)
        _audit(context, "key.create", tenant=issued.tenant, key_id=issued.key_id)
        return admin_pb2.CreateKeyResponse(tenant=issued.tenant, api_key=issued.api_key, key_id=issued.key_id)

    async def RevokeKey(self, request: admin_pb2.RevokeKeyRequest, context) -> admin_pb2.RevokeKeyResponse:
        self._guard(context, "key.revoke")
        revoked = await self.tenants.revoke(request.key_id)
        _audit(context, "key.revoke", key_id=request.key_id, revoked=revoked)
        return admin_pb2.RevokeKeyResponse(revoked=revoked)

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context
    ) -> admin_pb2.ListTenantsResponse:
        self._guard(context, "tenant.list")
        tenants, token = await self.tenants.list_tenants(request.page_size, request.page_token)
        return admin_pb2.ListTenantsResponse(
            tenants=[_tenant_message(t) for t in tenants], next_page_token=token
        )

    async def ListKeys(self, request: admin_pb2.ListKeysRequest, context) -> admin_pb2.ListKeysResponse:
        self._guard(context, "key.list")
        keys = await self.tenants.list_keys(request.tenant)
        return admin_pb2.ListKeysResponse(keys=[_key_message(k) for k in keys])

    async def DeleteTenant(
        self, request: admin_pb2.DeleteTenantRequest, context
    ) -> admin_pb2.DeleteTenantResponse:
        self._guard(context, "tenant.delete")
        _audit(context, "tenant.delete", tenant=request.tenant, outcome="started")
        removed = await self.removal.remove(request.tenant)
        _audit(context, "tenant.delete", tenant=request.tenant, outcome="done", **removed.__dict__)
        return admin_pb2.DeleteTenantResponse(
            keys_revoked=removed.keys_revoked,
            jobs_deleted=removed.jobs_deleted,
            tunes_deleted=removed.tunes_deleted,
            objects_deleted=removed.objects_deleted,
        )

    async def SetTenantLimits(
        self, request: admin_pb2.SetTenantLimitsRequest, context
    ) -> admin_pb2.TenantSummary:
        self._guard(context, "tenant.limits")
        limits = TenantLimits(
            max_pending_passes=request.limits.max_pending_passes,
            max_uploads=request.limits.max_uploads,
            max_passes_in_flight=request.limits.max_passes_in_flight,
        )
        summary = await self.tenants.set_limits(request.tenant, limits)
        _audit(context, "tenant.limits", tenant=request.tenant, **limits.__dict__)
        return _tenant_message(summary)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _tenant_message(tenant: TenantSummary) -> admin_pb2.TenantSummary:
    return admin_pb2.TenantSummary(
        tenant=tenant.tenant,
        name=tenant.name,
        created_at=_timestamp(tenant.created_at),
        live_keys=tenant.live_keys,
        limits=admin_pb2.TenantLimits(
            max_pending_passes=tenant.limits.max_pending_passes,
            max_uploads=tenant.limits.max_uploads,
            max_passes_in_flight=tenant.limits.max_passes_in_flight,
        ),
    )


def _key_message(key: KeySummary) -> admin_pb2.ApiKeySummary:
    message = admin_pb2.ApiKeySummary(key_id=key.key_id, tenant=key.tenant, revoked=key.revoked)
    if key.created_at is not None:
        message.created_at.CopyFrom(_timestamp(key.created_at))
    if key.revoked_at is not None:
        message.revoked_at.CopyFrom(_timestamp(key.revoked_at))
    return message
