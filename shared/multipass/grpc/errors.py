"""Mapping the error hierarchy to gRPC status codes, in one place.

Servicers just raise :class:`multipass.errors.MultipassError`; :class:`ErrorInterceptor` turns it into a
status with ``google.rpc`` details, logs unexpected exceptions once with their traceback and answers
``INTERNAL`` without leaking internals. Every status carries one ``ErrorInfo`` (the error's stable
reason, :data:`multipass.errors.ERROR_DOMAIN`, metadata), plus ``BadRequest`` field violations when there
are any and ``RetryInfo`` for ``RESOURCE_EXHAUSTED``.

The status message and details travel in trailers, which gRPC limits (8 KiB by default, 16 KiB at most):
the message is capped at :data:`MESSAGE_BYTES`, each violation and metadata value too, and violations
beyond :data:`DETAILS_BYTES` are summed up in one last violation. Object reprs with memory addresses
(``<_io.BytesIO object at 0x...>``) are reduced to their type name.
"""

from __future__ import annotations

import logging
import re

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
#: UTF-8 bytes of a status message (percent-encoded in the ``grpc-message`` trailer: at most 3x).
MESSAGE_BYTES = 512
#: UTF-8 bytes of one violation's field, of its description, of one ErrorInfo metadata value.
FIELD_BYTES = 128
DESCRIPTION_BYTES = 384
METADATA_BYTES = 128
#: Serialized bytes of all field violations together (base64-encoded in ``grpc-status-details-bin``).
DETAILS_BYTES = 3072
_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*)[^<>]*? at 0x[0-9a-fA-F]+>")


def capped(text: str, limit_bytes: int) -> str:
    """``text`` without object reprs, cut to at most ``limit_bytes`` UTF-8 bytes (ending in "…" if cut)."""
    text = _OBJECT_REPR.sub(lambda match: f"<{match.group(1).rsplit('.', 1)[-1]}>", text)
    encoded = text.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return text
    return encoded[: limit_bytes - 3].decode("utf-8", "ignore") + "…"


def _field_violations(violations: tuple[errors.Violation, ...]) -> error_details_pb2.BadRequest:
    """The violations that fit in :data:`DETAILS_BYTES`; the rest are counted in one last entry."""
    bad_request = error_details_pb2.BadRequest()
    used = 0
    for shown, violation in enumerate(violations):
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=capped(violation.field, FIELD_BYTES),
            description=capped(violation.description, DESCRIPTION_BYTES),
        )
        used += entry.ByteSize() + 3
        if used > DETAILS_BYTES - 64:
            left = len(violations) - shown
            bad_request.field_violations.add(
                field="request", description=f"{left} more problems not shown; fix the ones above and retry"
            )
            break
        bad_request.field_violations.append(entry)
    return bad_request


def error_info(error: errors.MultipassError) -> error_details_pb2.ErrorInfo:
    """The ``google.rpc.ErrorInfo`` of one of our errors."""
    return error_details_pb2.ErrorInfo(
        reason=str(error.reason),
        domain=errors.ERROR_DOMAIN,
        metadata={
            capped(key, FIELD_BYTES): capped(value, METADATA_BYTES)
            for key, value in list(error.metadata.items())[:8]
        },
    )


def to_status(error: errors.MultipassError) -> grpc.Status:
    """The gRPC status (with rich details) for one of our errors."""
    grpc_code = GRPC_CODES.get(error.code_name, grpc.StatusCode.INTERNAL)
    status = status_pb2.Status(
        code=getattr(code_pb2, grpc_code.name), message=capped(str(error), MESSAGE_BYTES)
    )
    status.details.add().Pack(error_info(error))
    if error.violations:
        status.details.add().Pack(_field_violations(error.violations))
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_seconds * 1000))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    except ValueError:  # details that do not match the code and message
        return None


def from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> errors.MultipassError:
    """Rebuild our error (field violations, reason, metadata) from a status received from another service."""
    code = error.code()
    cls = errors.ERRORS_BY_CODE.get(
        code.name, errors.Unavailable if code == grpc.StatusCode.UNAVAILABLE else errors.Internal
    )
    violations: list[errors.Violation] = []
    reason: errors.Reason | None = None
    metadata: dict[str, str] = {}
    status = _status_of(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [errors.Violation(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == errors.ERROR_DOMAIN and info.reason in errors.Reason.__members__:
                reason, metadata = errors.Reason(info.reason), dict(info.metadata)
    message = error.details() or code.name
    if cls is errors.ResourceExhausted:
        return errors.ResourceExhausted(message, reason=reason, metadata=metadata)
    return cls(message, violations=violations, reason=reason, metadata=metadata)


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


def reason_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The status's ``ErrorInfo`` (reason, domain, metadata), or None when it has none."""
    status = _status_of(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Abort the call with the status for ``error`` (unexpected exceptions become INTERNAL)."""
    if isinstance(error, UndecodableRequest):
        error = errors.InvalidInput(
            "request body is not a valid protobuf message",
            violations=[
                errors.Violation("request", f"{error.size} bytes that do not decode as {method}'s request")
            ],
            reason=errors.Reason.UNDECODABLE_REQUEST,
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
