"""What every error status carries (ErrorInfo, BadRequest, RetryInfo) and what its message may hold: values
capped, no object reprs, each thing said once, trailers that fit gRPC's header limits. The reasons are
listed in common.proto and docs/CONTRACTS.md."""

from __future__ import annotations

import io
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from multipass import errors
from multipass.errors import ERROR_DOMAIN, InvalidInput, Reason, Violation, echo
from multipass.grpc.errors import MESSAGE_BYTES, field_violations, from_rpc_error, reason_of
from multipass.grpc.server import Registration, start_grpc_server
from multipass.v1 import prompt_pb2, prompt_pb2_grpc
from multipass_client import describe_rpc_error, error_reason

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "multipass.v1.PromptParser"
HUGE = "j" * 100_000


class Raising(prompt_pb2_grpc.PromptParserServicer):
    """Raises what the request text names."""

    async def Parse(self, request, context):
        text = request.text
        if text == "huge value":
            raise InvalidInput.of([Violation("job_id", f"got {echo(HUGE)}; expected a job id")])
        if text == "huge unescaped":  # a raise site that forgot echo(): the mapping still caps it
            raise InvalidInput.of([Violation("job_id", f"got {HUGE!r}")])
        if text == "many violations":
            raise InvalidInput.of([Violation(f"params.p{i}", "x" * 200) for i in range(10_000)])
        if text == "required":
            raise InvalidInput.of([Violation("job_id", "is required")])
        if text == "object repr":
            raise InvalidInput.of([Violation("chunk", f"cannot identify image file {io.BytesIO()!r}")])
        if text == "unknown tune":
            raise errors.NotFound(
                "tune '42' does not exist", reason=Reason.UNKNOWN_TUNE, metadata={"tuneId": "42"}
            )
        if text == "quota":
            raise errors.ResourceExhausted(
                "too much pending work",
                retry_after_seconds=3,
                reason=Reason.QUOTA_EXCEEDED,
                metadata={"scope": "tenant"},
            )
        if text == "bug":
            raise KeyError("internals")
        return prompt_pb2.ParseResponse()


@pytest.fixture
async def channel():
    server = await start_grpc_server(
        "127.0.0.1:0", [Registration(prompt_pb2_grpc.add_PromptParserServicer_to_server, Raising(), SERVICE)]
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as chan:
            yield chan
    finally:
        await server.stop(grace=0.5)


async def failure(channel, text: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompt_pb2_grpc.PromptParserStub(channel).Parse(prompt_pb2.ParseRequest(text=text))
    return caught.value


def test_echo_quotes_and_caps_values_and_never_shows_an_object_repr():
    assert echo("ohwx") == "'ohwx'"
    assert echo("x" * 65) == "'" + "x" * 64 + "…' (65 characters)"
    assert echo(HUGE).endswith("…' (100000 characters)") and len(echo(HUGE)) < 100
    assert echo(42) == "42" and echo(None) == "None"
    assert echo(b"\x00" * 10) == "<10 bytes>"
    assert echo(io.BytesIO()) == "<BytesIO>"


def test_a_message_says_each_thing_once():
    one = InvalidInput.of([Violation("job_id", "is required")])
    assert str(one) == "invalid job_id: is required"
    two = InvalidInput.of([Violation("a", "x"), Violation("b", "y")])
    assert str(two) == "invalid request: 2 problems (a: x; b: y)"
    # A message that does not state its violations still lists them (configuration errors).
    config = errors.ConfigError(
        "bad configuration: MULTIPASS_X", violations=[Violation("MULTIPASS_X", "got 'x'")]
    )
    assert str(config) == "bad configuration: MULTIPASS_X (MULTIPASS_X: got 'x')"


async def test_a_100_kb_value_gives_a_clean_invalid_argument_with_capped_message(channel):
    for text in ("huge value", "huge unescaped"):
        error = await failure(channel, text)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert len(error.details().encode()) <= MESSAGE_BYTES
        [(field, description)] = field_violations(error)
        assert field == "job_id" and len(description) < 1000 and "…" in description


async def test_ten_thousand_violations_fit_in_the_trailers_and_say_how_many_were_left_out(channel):
    error = await failure(channel, "many violations")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    found = field_violations(error)
    assert 3 < len(found) < 100
    assert found[-1][0] == "request" and re.match(r"\d+ more problems not shown", found[-1][1])
    assert int(found[-1][1].split()[0]) + len(found) - 1 == 10_000


async def test_no_object_repr_or_memory_address_reaches_the_client(channel):
    error = await failure(channel, "object repr")
    text = error.details() + repr(field_violations(error))
    assert "0x" not in text and "object at" not in text
    assert field_violations(error) == [("chunk", "cannot identify image file <BytesIO>")]


async def test_every_status_carries_error_info_with_a_stable_reason(channel):
    cases = {
        "required": (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {}),
        "unknown tune": (grpc.StatusCode.NOT_FOUND, "UNKNOWN_TUNE", {"tuneId": "42"}),
        "quota": (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", {"scope": "tenant"}),
        "bug": (grpc.StatusCode.INTERNAL, "INTERNAL", {}),
    }
    for text, (code, reason, metadata) in cases.items():
        error = await failure(channel, text)
        assert error.code() == code
        info = reason_of(error)
        assert (info.reason, info.domain, dict(info.metadata)) == (reason, ERROR_DOMAIN, metadata)
        details = rpc_status.from_call(error).details
        assert sum(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in details) == 1
    assert "internals" not in (await failure(channel, "bug")).details()


async def test_an_error_passed_on_from_another_service_keeps_its_reason_and_metadata(channel):
    rebuilt = from_rpc_error(await failure(channel, "unknown tune"))
    assert isinstance(rebuilt, errors.NotFound)
    assert (rebuilt.reason, rebuilt.metadata) == (Reason.UNKNOWN_TUNE, {"tuneId": "42"})
    quota = from_rpc_error(await failure(channel, "quota"))
    assert isinstance(quota, errors.ResourceExhausted) and quota.reason == Reason.QUOTA_EXCEEDED
    required = from_rpc_error(await failure(channel, "required"))
    assert str(required) == "invalid job_id: is required"


async def test_the_client_library_reads_the_reason(channel):
    error = await failure(channel, "unknown tune")
    assert error_reason(error) == ("UNKNOWN_TUNE", {"tuneId": "42"})
    assert describe_rpc_error(error) == "NOT_FOUND [UNKNOWN_TUNE]: tune '42' does not exist"
    plain = await failure(channel, "required")
    assert describe_rpc_error(plain).splitlines() == [
        "INVALID_ARGUMENT: invalid job_id: is required",
        "  job_id: is required",
    ]


def test_every_reason_is_listed_in_the_protos_and_the_contracts():
    proto = (ROOT / "protos" / "multipass" / "v1" / "common.proto").read_text()
    contracts = (ROOT / "docs" / "CONTRACTS.md").read_text()
    assert f'"{ERROR_DOMAIN}"' in proto and f"`{ERROR_DOMAIN}`" in contracts
    listed_in_proto = set(re.findall(r"^//\s+([A-Z][A-Z_]+[A-Z]):", proto, flags=re.MULTILINE))
    errors_section = contracts.split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    listed_in_contracts = set(re.findall(r"^\| `([A-Z][A-Z_]+)` \|", errors_section, flags=re.MULTILINE))
    assert listed_in_proto == set(Reason.__members__)
    assert listed_in_contracts == set(Reason.__members__)
