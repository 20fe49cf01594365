"""Human-readable gRPC failures: the status code, the message and every field violation."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs of a status's ``google.rpc.BadRequest`` details."""
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


def violations_of(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs from the status's ``google.rpc.BadRequest`` details, if any."""
    try:
        return field_violations(error)
    except (ValueError, AttributeError):  # a status without rich details, or not from a call
        return []


def error_reason(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The status's ``google.rpc.ErrorInfo`` reason (e.g. ``UNKNOWN_TUNE``) and metadata; ("", {}) without one.

    Reasons are stable (listed in protos/multipass/v1/common.proto): branch on them, not on messages.
    """
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):  # a status without rich details, or not from a call
        return "", {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


def describe_rpc_error(error: grpc.RpcError) -> str:
    """``CODE [REASON]: message`` followed by one indented line per field violation."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    reason, _ = error_reason(error)
    name = code.name if code else "UNKNOWN"
    if reason and reason != name:
        name = f"{name} [{reason}]"
    lines = [f"{name}: {details or ''}".rstrip(": ")]
    lines += [f"  {field}: {description}" for field, description in violations_of(error)]
    return "\n".join(lines)
