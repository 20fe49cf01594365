"""Internal-call authentication: with ``MULTIPASS_INTERNAL_TOKEN`` set, every rpc except health and
reflection needs the ``x-multipass-internal: <token>`` metadata; others get UNAUTHENTICATED."""

from __future__ import annotations

import hmac

import grpc
from multipass import errors
from multipass.grpc_errors import to_status

INTERNAL_TOKEN_HEADER = "x-multipass-internal"
#: Method prefixes open without the token (probes and tooling).
EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._token = token.encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(EXEMPT):
            return await continuation(handler_call_details)
        offered = dict(handler_call_details.invocation_metadata or ()).get(INTERNAL_TOKEN_HEADER, "")
        offered = offered.encode() if isinstance(offered, str) else offered
        if hmac.compare_digest(offered, self._token):
            return await continuation(handler_call_details)
        status = to_status(
            errors.Unauthenticated(f"{method} is internal: send the {INTERNAL_TOKEN_HEADER} header")
        )

        async def deny(request, context: grpc.aio.ServicerContext):
            await context.abort_with_status(status)

        return grpc.unary_unary_rpc_method_handler(deny)
