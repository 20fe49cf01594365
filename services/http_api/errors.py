"""One mapping from failures to HTTP answers: the gateway's gRPC status (with ``google.rpc`` details),
our own error hierarchy, request validation, and anything unexpected (500, logged, nothing leaked).

Every error body is ``{"error": <message>}``, plus ``"errors": {field: [description, ...]}`` when fields
are at fault, which is the shape Astria's clients read.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from starlette.exceptions import HTTPException as StarletteHTTPException

from multipass import errors
from multipass_http_api.deps import authorization_header

log = logging.getLogger(__name__)

#: Longest message echoed from the gateway (its messages may quote the caller's input).
MAX_MESSAGE_CHARS = 2000
#: Gateway field names that point inside a field (the prompt parser's ``flag --mask_dilate`` and
#: ``tag <lora:1:9>`` are parts of the prompt text): renamed to that field, their messages keep the part.
PART_OF_A_FIELD = ("flag ", "tag ")


@dataclass
class HttpError(Exception):
    """An HTTP answer decided by this service: status, JSON body and extra headers."""

    status: int
    message: str
    field_errors: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        body: dict = {"error": self.message}
        if self.field_errors:
            body["errors"] = self.field_errors
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)

    def renamed(self, rename: Callable[[str], str]) -> HttpError:
        """The same answer with its fields spelled as the client sent them, in ``errors`` and in the
        message (whose ``invalid <field>: ...`` part, or ``invalid request: N problems (<field>: ...;
        <field>: ...)`` list, names the gateway's fields)."""
        fields: dict[str, list[str]] = {}
        message = self.message
        for name, messages in self.field_errors.items():
            spelled = rename(name)
            if spelled != name and name.startswith(PART_OF_A_FIELD):
                # A part of the field (a flag or tag of the text): each message says which part.
                messages = [text if name in text else f"{name}: {text}" for text in messages]
            fields.setdefault(spelled, []).extend(messages)
            if spelled != name:
                # "invalid flag --x: got ..." -> "invalid prompt[text]: flag --x: got ...": the part stays named
                part = f"{name}: " if name.startswith(PART_OF_A_FIELD) else ""
                for before in ("invalid ", "(", "; "):
                    message = message.replace(f"{before}{name}: ", f"{before}{spelled}: {part}")
        return HttpError(self.status, message, fields, self.headers)

    def as_body_fault(self) -> HttpError:
        """A 404 naming fields of a submitted body (a tune tagged in the text, an upload id that names no
        upload) is the body's fault, not the route's: 422. Other answers stay as they are."""
        if self.status == 404 and self.field_errors:
            return HttpError(422, self.message, self.field_errors, self.headers)
        return self


def _cap(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _field_errors(pairs) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, description in pairs:
        found.setdefault(name or "request", []).append(_cap(description))
    return found


def _status_for(code_name: str, has_fields: bool) -> int:
    if code_name == "INVALID_ARGUMENT":
        return 422
    if code_name == "FAILED_PRECONDITION":
        # A field the deployment refuses (a callback with no signing key, a model not installed) is the
        # caller's to change: 422. A state that forbids the call: 409.
        return 422 if has_fields else 409
    return {
        "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "ABORTED": 409,
        "RESOURCE_EXHAUSTED": 429,
        "UNAVAILABLE": 503,
        "CANCELLED": 503,
        "DEADLINE_EXCEEDED": 504,
        "OUT_OF_RANGE": 422,
    }.get(code_name, 500)


def http_error_for_rpc(error: grpc.RpcError) -> HttpError:
    """The HTTP answer for a status the gateway returned."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    violations: list[tuple[str, str]] = []
    retry_after: float | None = None
    reason = ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    http_status = _status_for(code.name, bool(violations))
    if http_status >= 500 and http_status not in (503, 504):
        log.error("gateway answered %s: %s", code.name, error.details())
        return HttpError(500, "internal error")
    if http_status in (503, 504):
        # The channel's own failures name internal addresses: log them, answer in general terms.
        log.warning("gateway call failed with %s: %s", code.name, error.details())
        message = "the service is unavailable; retry later" if http_status == 503 else "the gateway timed out"
    else:
        message = _cap(error.details() or code.name.lower().replace("_", " "))
    headers: dict[str, str] = {}
    if http_status == 429 or (http_status == 503 and retry_after is not None):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after if retry_after is not None else 1)))
    if reason:
        headers["X-Multipass-Error-Reason"] = reason
    return HttpError(http_status, message, _field_errors(violations), headers)


def http_error_for(error: errors.MultipassError) -> HttpError:
    """The HTTP answer for one of our own errors raised in this service."""
    http_status = _status_for(error.code_name, bool(error.violations))
    if http_status >= 500 and http_status not in (503, 504):
        log.error("internal error: %s", error)
        return HttpError(500, "internal error")
    headers = {}
    if isinstance(error, errors.ResourceExhausted):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
    return HttpError(
        http_status,
        _cap(error.message),
        _field_errors((v.field, v.description) for v in error.violations),
        headers,
    )


#: The branches pydantic names when a value fits none of a union's types ("params.steps.int").
_TYPE_BRANCHES = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes"})


def _validation_field(location: tuple, kind: str = "") -> str:
    """The field a validation error is about, as the client wrote it: not the place it was found in
    ("body", "query"), not the type branch pydantic tried, not the byte offset of a JSON syntax error."""
    if kind == "json_invalid":
        return "body"
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    while len(parts) > 1 and (parts[-1] in _TYPE_BRANCHES or parts[-1].startswith("function-")):
        parts.pop()
    return ".".join(parts) or "request"


#: What a type error of pydantic says was expected, in words.
_EXPECTED_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "list_type": "a list",
}
_BOUNDS = (("ge", "at least"), ("gt", "above"), ("le", "at most"), ("lt", "below"))


def _shown(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_problems(found: list[dict]) -> list[tuple[str, str]]:
    """pydantic's errors as (field, description), each description saying what was sent and what is
    allowed: one line per field for a value of none of a union's types ("got null; expected a string,
    an integer, a number or a boolean"), the bound for a value out of range ("got 200; allowed: at most 120")."""
    by_field: dict[str, list[dict]] = {}
    for error in found:
        field = _validation_field(tuple(error.get("loc", ())), error.get("type", ""))
        by_field.setdefault(field, []).append(error)
    problems: list[tuple[str, str]] = []
    for field, errors_of_field in by_field.items():
        expected = [_EXPECTED_TYPES.get(error.get("type", "")) for error in errors_of_field]
        if all(expected) and "input" in errors_of_field[0]:
            kinds = list(dict.fromkeys(expected))
            wanted = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
            problems.append((field, f"got {_shown(errors_of_field[0]['input'])}; expected {wanted}"))
            continue
        for error in errors_of_field:
            message, context = (
                error.get("msg", "invalid").removeprefix("Value error, "),
                error.get("ctx") or {},
            )
            bounds = [f"{words} {context[key]}" for key, words in _BOUNDS if key in context]
            if bounds and "input" in error:
                message = f"got {_shown(error['input'])}; allowed: {', '.join(bounds)}"
            elif "input" in error and error.get("type") not in ("missing", "json_invalid", "extra_forbidden"):
                message = f"got {_shown(error['input'])}; {message[:1].lower()}{message[1:]}"
            problems.append((field, message))
    return problems


def _needs_api_key(request: Request) -> bool:
    """Whether the request's route reads the caller's ``Authorization`` header (every tenant route)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        if current.call is authorization_header:
            return True
        pending.extend(current.dependencies)
    return False


def _anonymous(request: Request) -> bool:
    """A request without a key to a route that needs one: its answer is 401 whatever else is wrong with
    it (who is asking comes before what is asked, so an anonymous caller learns nothing of the checks)."""
    return not request.headers.get("authorization", "").strip() and _needs_api_key(request)


#: What FastAPI says of a body its JSON decoder raised on (other than a syntax error).
_UNPARSED_BODY = "There was an error parsing the body"
_UNREADABLE_JSON = "is not JSON this service can read (nested too deeply?)"
_UNENCODABLE = "contains text that is not valid Unicode (a lone UTF-16 surrogate)"

#: Answers about what a request asks (bad fields, bad values), which an anonymous request gets as a 401.
_REQUEST_FAULTS = frozenset({400, 404, 409, 422})

#: What a tenant route answers a request without a key, whatever else is wrong with it (the gateway's words).
MISSING_KEY = HttpError(
    401,
    "missing API key: send the header 'authorization: Bearer <api key>'",
    headers={"X-Multipass-Error-Reason": errors.Reason.API_KEY_MISSING.value},
)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a route can meet, answered in the one JSON shape."""

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, error: HttpError) -> JSONResponse:
        if error.status in _REQUEST_FAULTS and _anonymous(request):
            return MISSING_KEY.response()
        return error.response()

    @app.exception_handler(grpc.RpcError)
    async def _rpc_error(_request: Request, error: grpc.RpcError) -> JSONResponse:
        return http_error_for_rpc(error).response()

    @app.exception_handler(errors.MultipassError)
    async def _multipass_error(request: Request, error: errors.MultipassError) -> JSONResponse:
        answer = http_error_for(error)
        if answer.status in _REQUEST_FAULTS and _anonymous(request):
            return MISSING_KEY.response()
        return answer.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        if _anonymous(request):
            return MISSING_KEY.response()
        fields = _field_errors(validation_problems(list(error.errors())))
        summary = "; ".join(f"{name}: {', '.join(messages)}" for name, messages in fields.items())
        return HttpError(422, _cap(f"invalid request: {summary}"), fields).response()

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code in _REQUEST_FAULTS and _anonymous(request):
            return MISSING_KEY.response()
        if error.status_code == 400 and error.detail == _UNPARSED_BODY:
            # A body the JSON decoder gave up on (nested too deeply): the request's fault, named.
            return HttpError(
                422, "invalid request: body: is not JSON this service can read", {"body": [_UNREADABLE_JSON]}
            ).response()
        message = error.detail if isinstance(error.detail, str) else "request refused"
        return HttpError(error.status_code, message, headers=dict(error.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, UnicodeEncodeError):
            # Text no protobuf string can carry, in a place the request's checks did not look at.
            if _anonymous(request):
                return MISSING_KEY.response()
            return HttpError(422, f"invalid request: {_UNENCODABLE}", {"request": [_UNENCODABLE]}).response()
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return HttpError(500, "internal error; it has been logged").response()
