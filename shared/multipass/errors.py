"""The one error hierarchy of Multipass.

Domain code raises these; the gRPC interceptor (``multipass.grpc.errors``) maps them to status codes,
and the workers map them to ack/nak/term decisions. Nothing else decides what an error means.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One problem with one field: the field, flag, parameter or tag, and what is wrong with it."""

    field: str
    description: str


class MultipassError(Exception):
    """Base of every error the services raise on purpose."""

    #: Name of the matching ``multipass.v1.ErrorCode`` value (without prefix).
    code_name = "INTERNAL"
    #: Whether retrying the same work later may succeed.
    retriable = False

    def __init__(self, message: str, *, violations: list[Violation] | tuple[Violation, ...] = ()):
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)

    def __str__(self) -> str:
        if not self.violations:
            return self.message
        details = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return f"{self.message} ({details})"


class InvalidInput(MultipassError):
    """Bad input: retrying the same request cannot succeed."""

    code_name = "INVALID_ARGUMENT"

    @classmethod
    def of(cls, violations: list[Violation]) -> InvalidInput:
        """One error carrying every violation found."""
        count = len(violations)
        summary = violations[0].description if count == 1 else f"{count} problems"
        field = violations[0].field if count == 1 else "request"
        return cls(f"invalid {field}: {summary}", violations=violations)


class NotFound(MultipassError):
    code_name = "NOT_FOUND"


class PermissionDenied(MultipassError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(MultipassError):
    code_name = "UNAUTHENTICATED"


class FailedPrecondition(MultipassError):
    """A model or other installed component is missing, or the state forbids the call."""

    code_name = "FAILED_PRECONDITION"


class ResourceExhausted(MultipassError):
    code_name = "RESOURCE_EXHAUSTED"
    retriable = True

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(MultipassError):
    """A dependency (object store, NATS, a service) is unavailable; retry later."""

    code_name = "UNAVAILABLE"
    retriable = True


class Cancelled(MultipassError):
    code_name = "CANCELLED"


class DeadlineExceeded(MultipassError):
    code_name = "DEADLINE_EXCEEDED"
    retriable = True


class Internal(MultipassError):
    code_name = "INTERNAL"


class ConfigError(MultipassError):
    """A setting is missing or malformed; the message names the environment variable."""

    code_name = "FAILED_PRECONDITION"


ERRORS_BY_CODE: dict[str, type[MultipassError]] = {
    cls.code_name: cls
    for cls in (
        InvalidInput,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Cancelled,
        DeadlineExceeded,
        Internal,
    )
}
