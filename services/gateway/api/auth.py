"""Credentials of a call: the tenant's API key (``authorization: Bearer <key>``) and the admin token."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import grpc

from multipass.errors import Reason, Unauthenticated
from multipass_gateway.infra.tenant_store import AuthenticatedKey, TenantStore

#: Metadata key of the operator credential (also accepted as ``authorization: Bearer <token>``).
ADMIN_TOKEN_HEADER = "x-multipass-admin-token"


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>``, or None when absent or malformed."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def api_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key of ``authorization: Bearer <key>``; None without the header; Unauthenticated, saying how
    the header must look, when it is there in another form (e.g. the bare key)."""
    token = bearer_token(metadata)
    if token is None and header(metadata, "authorization") is not None:
        raise Unauthenticated(
            "the authorization header must be 'Bearer <api key>' (the word Bearer, a space, then the key)",
            reason=Reason.API_KEY_MALFORMED,
        )
    return token


def header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def admin_token_matches(metadata: Iterable[tuple[str, str | bytes]] | None, expected: str) -> bool:
    """True when the call carries ``expected`` (in x-multipass-admin-token or as a bearer token).

    Compared in constant time; an empty ``expected`` (admin API disabled) matches nothing.
    """
    if not expected:
        return False
    presented = [header(metadata, ADMIN_TOKEN_HEADER), bearer_token(metadata)]
    expected_bytes = expected.encode("utf-8")
    return any(
        hmac.compare_digest(candidate.encode("utf-8"), expected_bytes)
        for candidate in presented
        if candidate is not None
    )


async def authenticate(tenants: TenantStore, context: grpc.aio.ServicerContext) -> str:
    """The tenant of the call's API key; Unauthenticated without a live key."""
    return await tenants.authenticate(api_key(context.invocation_metadata()))


async def authenticate_key(tenants: TenantStore, context: grpc.aio.ServicerContext) -> AuthenticatedKey:
    """The tenant and key digest of the call's API key (streams hold the key to end on its revocation)."""
    return await tenants.authenticate_key(api_key(context.invocation_metadata()))
