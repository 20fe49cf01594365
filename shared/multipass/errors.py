"""The one error hierarchy of Multipass.

Domain code raises these; the gRPC interceptor (``multipass.grpc.errors``) maps them to status codes,
and the workers map them to ack/nak/term decisions. Nothing else decides what an error means.

Every error carries a stable machine-readable :class:`Reason` (sent as ``google.rpc.ErrorInfo.reason``
in :data:`ERROR_DOMAIN`), so clients branch on reasons, never on message text. A value received from a
caller is shown in a message only through :func:`echo`, which quotes it and caps its length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

#: ``google.rpc.ErrorInfo.domain`` of every error a Multipass service answers.
ERROR_DOMAIN = "multipass.dev"
#: Characters of a received value that an error message shows; longer values end in "…".
ECHO_CHARS = 64


class Reason(StrEnum):
    """Stable reasons of errors (``google.rpc.ErrorInfo.reason``), listed in common.proto and CONTRACTS.md.

    Each code's own name is the reason when nothing more precise applies.
    """

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    #: The request's bytes do not decode as the rpc's request message.
    UNDECODABLE_REQUEST = "UNDECODABLE_REQUEST"
    #: An image is larger (bytes or pixels) than the gateway accepts.
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    #: A job id names no job of the caller's tenant.
    UNKNOWN_JOB = "UNKNOWN_JOB"
    #: A tune id (GetTune, DeleteTune, or a <lora:...>/<faceid:...> tag of a prompt) names no tune of the tenant.
    UNKNOWN_TUNE = "UNKNOWN_TUNE"
    #: An image id (input_image_id, mask_image_id, reference_image_ids) names no upload of the tenant.
    UNKNOWN_IMAGE = "UNKNOWN_IMAGE"
    #: CreateKey names a tenant that does not exist.
    UNKNOWN_TENANT = "UNKNOWN_TENANT"
    #: RevokeKey names a key id that does not exist.
    UNKNOWN_KEY = "UNKNOWN_KEY"
    #: The call has no ``authorization`` header.
    API_KEY_MISSING = "API_KEY_MISSING"
    #: The ``authorization`` header is not ``Bearer <api key>``.
    API_KEY_MALFORMED = "API_KEY_MALFORMED"
    #: The API key is unknown or revoked.
    API_KEY_INVALID = "API_KEY_INVALID"
    #: The admin API is turned off on this gateway (no MULTIPASS_ADMIN_TOKEN).
    ADMIN_API_DISABLED = "ADMIN_API_DISABLED"
    #: An Admin call without the right admin token.
    ADMIN_TOKEN_INVALID = "ADMIN_TOKEN_INVALID"
    #: The tenant's (metadata ``scope=tenant``) or the service's (``scope=service``) pending-work budget is spent.
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    #: The idempotency key was first used with a different request body (metadata ``idempotencyKey``, ``jobId``).
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    #: callback_url given while callbacks are turned off (no MULTIPASS_CALLBACK_SIGNING_KEY).
    CALLBACKS_DISABLED = "CALLBACKS_DISABLED"
    #: The configured base or person model is not served by the diffusion workers.
    MODEL_NOT_SERVED = "MODEL_NOT_SERVED"
    #: The request needs a component (ControlNet, upscaler, FaceID, ...) the workers do not have installed.
    COMPONENT_NOT_INSTALLED = "COMPONENT_NOT_INSTALLED"


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` as an error message shows it: a quoted string capped at ``limit`` characters, a number as
    written, bytes by their length and any other object by its type name (never its repr with an address)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        shown = repr(value[:limit])
        return f"{shown[:-1]}…{shown[-1]} ({len(value)} characters)"
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} digits)"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class Violation:
    """One problem with one field: the field, flag, parameter or tag, and what is wrong with it."""

    field: str
    description: str


class MultipassError(Exception):
    """Base of every error the services raise on purpose."""

    #: Name of the gRPC status code (and of the matching ``multipass.v1.ErrorCode`` value, without prefix).
    code_name = "INTERNAL"
    #: The reason when the raise site names none.
    default_reason = Reason.INTERNAL
    #: Whether retrying the same work later may succeed.
    retriable = False

    def __init__(
        self,
        message: str,
        *,
        violations: list[Violation] | tuple[Violation, ...] = (),
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)
        self.reason = Reason(reason) if reason is not None else self.default_reason
        #: ``google.rpc.ErrorInfo.metadata``: lowerCamelCase keys, short values (ids, limits, scopes).
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        """The message, then every violation it does not already state (each thing said once)."""
        unsaid = [
            f"{v.field}: {v.description}"
            for v in self.violations
            if f"{v.field}: {v.description}" not in self.message
        ]
        return f"{self.message} ({'; '.join(unsaid)})" if unsaid else self.message


class InvalidInput(MultipassError):
    """Bad input: retrying the same request cannot succeed."""

    code_name = "INVALID_ARGUMENT"
    default_reason = Reason.INVALID_ARGUMENT

    @classmethod
    def of(
        cls,
        violations: list[Violation],
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> InvalidInput:
        """One error carrying every violation found."""
        return cls(violations_summary(violations), violations=violations, reason=reason, metadata=metadata)


def violations_summary(violations: list[Violation] | tuple[Violation, ...]) -> str:
    """``invalid <field>: <description>`` for one violation, ``invalid request: <n> problems`` for several."""
    if len(violations) == 1:
        return f"invalid {violations[0].field}: {violations[0].description}"
    return f"invalid request: {len(violations)} problems"


class NotFound(MultipassError):
    """A referenced object (job, tune, uploaded image, tenant, key, stored object) does not exist."""

    code_name = "NOT_FOUND"
    default_reason = Reason.NOT_FOUND


class PermissionDenied(MultipassError):
    code_name = "PERMISSION_DENIED"
    default_reason = Reason.PERMISSION_DENIED


class Unauthenticated(MultipassError):
    code_name = "UNAUTHENTICATED"
    default_reason = Reason.UNAUTHENTICATED


class FailedPrecondition(MultipassError):
    """A model or other installed component is missing, or the state forbids the call."""

    code_name = "FAILED_PRECONDITION"
    default_reason = Reason.FAILED_PRECONDITION


class ResourceExhausted(MultipassError):
    code_name = "RESOURCE_EXHAUSTED"
    default_reason = Reason.RESOURCE_EXHAUSTED
    retriable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float = 1.0,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(MultipassError):
    """A dependency (object store, NATS, a service) is unavailable; retry later."""

    code_name = "UNAVAILABLE"
    default_reason = Reason.UNAVAILABLE
    retriable = True


class Cancelled(MultipassError):
    code_name = "CANCELLED"
    default_reason = Reason.CANCELLED


class DeadlineExceeded(MultipassError):
    code_name = "DEADLINE_EXCEEDED"
    default_reason = Reason.DEADLINE_EXCEEDED
    retriable = True


class Internal(MultipassError):
    code_name = "INTERNAL"
    default_reason = Reason.INTERNAL


class ConfigError(MultipassError):
    """A setting is missing or malformed; the message names the environment variable."""

    code_name = "FAILED_PRECONDITION"
    default_reason = Reason.FAILED_PRECONDITION


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
