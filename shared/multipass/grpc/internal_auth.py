"""Authentication of internal calls between services.

With ``MULTIPASS_INTERNAL_TOKEN`` set, every rpc except health and reflection needs the
``x-multipass-internal: <token>`` metadata (compared in constant time); other callers get UNAUTHENTICATED.
Clients attach the header with :func:`internal_metadata`.
"""

from __future__ import annotations

import hmac

import grpc

from multipass import errors
from multipass.grpc.errors import to_status

INTERNAL_TOKEN_HEADER = "x-multipass-internal"
#: Method prefixes open without the token (probes and tooling).
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def internal_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates an internal call (empty when no token is configured)."""
    return ((INTERNAL_TOKEN_HEADER, token),) if token else ()


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls that lack the internal token, whatever the method's streaming kind."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("InternalTokenInterceptor needs a non-empty token")
        self._token = token.encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return await continuation(handler_call_details)
        offered = dict(handler_call_details.invocation_metadata or ()).get(INTERNAL_TOKEN_HEADER, "")
        offered = offered.encode() if isinstance(offered, str) else offered
        if hmac.compare_digest(offered, self._token):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        status = to_status(
            errors.Unauthenticated(f"{method} is internal: send the {INTERNAL_TOKEN_HEADER} header")
        )

        async def deny(request, context: grpc.aio.ServicerContext):
            await context.abort_with_status(status)

        async def deny_stream(request, context: grpc.aio.ServicerContext):
            await context.abort_with_status(status)
            yield  # pragma: no cover - abort raises

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            deny_stream, handler.request_deserializer, handler.response_serializer
        )
