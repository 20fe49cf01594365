"""``GET /v1/callback-key``: the key the caller's callbacks are signed with (the gateway's ``GetCallbackKey``),
to check ``X-Multipass-Signature`` on the job and Astria callbacks it receives."""

from __future__ import annotations

from fastapi import APIRouter

from multipass_http_api.deps import Authorization, Gateway

router = APIRouter(prefix="/v1/callback-key", tags=["callbacks"])


@router.get("")
async def callback_key(authorization: Authorization, gateway: Gateway) -> dict[str, str]:
    """Your tenant's callback signing key; 409 when callbacks are disabled on this deployment."""
    return {"callback_signing_key": await gateway.callback_key(authorization)}
