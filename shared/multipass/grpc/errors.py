"""Mapping the error hierarchy to gRPC status codes, in one place.

Servicers just raise :class:`multipass.errors.MultipassError`; :class:`ErrorInterceptor` turns it into a
status with ``google.rpc`` details (``BadRequest`` field violations, ``RetryInfo``), logs unexpected
exceptions once with their traceback and answers ``INTERNAL`` without leaking internals.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from multipass import errors
from multipass.grpc.wrapping import UndecodableRequest, wrap_handler

log = logging.getLogger(__name__)

GRPC_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def to_status(error: errors.MultipassError) -> grpc.Status:
    """The gRPC status (with rich details) for one of our errors."""
    grpc_code = GRPC_CODES.get(error.code_name, grpc.StatusCode.INTERNAL)
    status = status_pb2.Status(code=getattr(code_pb2, grpc_code.name), message=str(error))
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_seconds * 1000))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


def from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> errors.MultipassError:
    """Rebuild our error (with field violations) from a status received from another service."""
    code = error.code()
    cls = errors.ERRORS_BY_CODE.get(
        code.name, errors.Unavailable if code == grpc.StatusCode.UNAVAILABLE else errors.Internal
    )
    violations: list[errors.Violation] = []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [errors.Violation(v.field, v.description) for v in bad_request.field_violations]
    message = error.details() or code.name
    if violations:
        # to_status() appends the violations to the message; keep them only once.
        suffix = " (" + "; ".join(f"{v.field}: {v.description}" for v in violations) + ")"
        message = message.removesuffix(suffix)
    if cls is errors.ResourceExhausted:
        return errors.ResourceExhausted(message)
    return cls(message, violations=violations)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs of a status's BadRequest details (for clients and tests)."""
    status = rpc_status.from_call(error)
    found: list[tuple[str, str]] = []
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Abort the call with the status for ``error`` (unexpected exceptions become INTERNAL)."""
    if isinstance(error, UndecodableRequest):
        error = errors.InvalidInput(
            "request body is not a valid protobuf message",
            violations=[
                errors.Violation("request", f"{error.size} bytes that do not decode as {method}'s request")
            ],
        )
    if not isinstance(error, errors.MultipassError):
        log.exception("unhandled error in %s", method, exc_info=error)
        error = errors.Internal("internal error; it has been logged")
    elif error.code_name == "INTERNAL":
        log.error("internal error in %s: %s", method, error)
    await context.abort_with_status(to_status(error))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns every exception raised by a servicer into the matching gRPC status."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def on_error(error: BaseException, context: grpc.aio.ServicerContext) -> None:
            await abort_with(context, error, method)

        return wrap_handler(handler, on_error=on_error)
