"""Human-readable gRPC failures: the status code, the message and every field violation."""

from __future__ import annotations

import grpc

from multipass.grpc_errors import field_violations


def violations_of(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs from the status's ``google.rpc.BadRequest`` details, if any."""
    try:
        return field_violations(error)
    except (ValueError, AttributeError):  # a status without rich details, or not from a call
        return []


def describe_rpc_error(error: grpc.RpcError) -> str:
    """``CODE: message`` followed by one indented line per field violation."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    lines = [f"{code.name if code else 'UNKNOWN'}: {details or ''}".rstrip(": ")]
    lines += [f"  {field}: {description}" for field, description in violations_of(error)]
    return "\n".join(lines)
