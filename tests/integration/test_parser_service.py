"""The prompt-parser service on a loopback port: Parse, errors as BadRequest, health, reflection,
metrics, the CLI through --addr, and the process entry point with graceful shutdown."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_probes import check_streaming_probes
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multipass.grpc.errors import field_violations
from multipass.v1 import prompt_pb2, prompt_pb2_grpc
from multipass_client.cli.main import main as cli_main
from multipass_prompt_parser.app import SERVICE_NAME, serve
from multipass_prompt_parser.settings import ParserSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
async def parser():
    handle = await serve(ParserSettings(grpc_addr="127.0.0.1:0", metrics_port=0, max_persons=4))
    try:
        yield handle
    finally:
        await handle.stop(grace=1)


@pytest.fixture
async def channel(parser):
    async with grpc.aio.insecure_channel(parser.address) as opened:
        yield opened


async def test_parse_multi_person_example(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    response = await stub.Parse(prompt_pb2.ParseRequest(text=(EXAMPLES / "multi-person.prompt").read_text()))
    parsed = response.parsed
    assert parsed.base_prompt.startswith("a grand ballroom")
    assert parsed.common_prompt.startswith("elegant")
    assert [[lora.tune_id for lora in person.loras] for person in parsed.persons] == [["849330"], ["861629"]]
    assert parsed.multi_pass and (parsed.params.w, parsed.params.h) == (768, 512)


async def test_request_params_and_uploaded_input_image(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    response = await stub.Parse(
        prompt_pb2.ParseRequest(
            text="BREAK BREAK ohwx woman <lora:1:1>", params={"steps": "12"}, has_input_image=True
        )
    )
    assert response.parsed.keep_background and response.parsed.params.steps == 12


async def test_invalid_input_is_invalid_argument_with_field_violations(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(
            prompt_pb2.ParseRequest(text="a park --mask_promt x <lora:12:x>\nstesp=3", params={"steps": "99"})
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = dict(field_violations(caught.value))
    assert set(found) == {"params.stesp", "flag --mask_promt", "tag <lora:12:x>", "params.steps"}
    assert "did you mean 'steps'?" in found["params.stesp"]
    assert "got '99'" in found["params.steps"] and "1..50" in found["params.steps"]


async def test_the_base_models_native_size_sizes_the_job_and_a_negative_one_is_named(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    sdxl = await stub.Parse(prompt_pb2.ParseRequest(text="a park\nar=portrait", native_size=1024))
    assert (sdxl.parsed.params.w, sdxl.parsed.params.h) == (1024, 1536)
    configured = await stub.Parse(prompt_pb2.ParseRequest(text="a park"))
    assert (configured.parsed.params.w, configured.parsed.params.h) == (512, 512)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(prompt_pb2.ParseRequest(text="a park", native_size=-512))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(caught.value)] == ["native_size"]


async def test_settings_limits_apply(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(prompt_pb2.ParseRequest(text="a park BREAK x" + " BREAK ohwx man" * 5))
    assert "at most 4 are allowed" in dict(field_violations(caught.value))["text"]


async def test_worst_case_report_fits_in_the_trailers(channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    params = {f"{'😀' * 300}{i}": "é" * 4000 for i in range(300)}
    text = " ".join(f"--{'ü' * 60}{i} <lora:{'ß' * 40}:x{i}>" for i in range(25))
    assert len(text) < 4000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(prompt_pb2.ParseRequest(text=text, params=params))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(field_violations(caught.value)) >= 2


async def test_undecodable_request_is_invalid_argument(channel):
    call = channel.unary_unary("/multipass.v1.PromptParser/Parse")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_is_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_and_reflection_v1_stream_and_close_cleanly(parser, caplog):
    await check_streaming_probes(parser.address, SERVICE_NAME, caplog)


async def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    answers = [answer async for answer in stub.ServerReflectionInfo(ask())]
    names = {service.name for service in answers[0].list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    assert answers[1].file_descriptor_response.file_descriptor_proto


async def test_metrics_count_handled_calls(parser, channel):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    await stub.Parse(prompt_pb2.ParseRequest(text="a park"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Parse(prompt_pb2.ParseRequest(text=""))
    url = f"http://127.0.0.1:{parser.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    labels = 'grpc_code="{}",grpc_method="Parse",grpc_service="multipass.v1.PromptParser",grpc_type="unary"'
    assert f"grpc_server_handled_total{{{labels.format('OK')}}}" in body
    assert f"grpc_server_handled_total{{{labels.format('INVALID_ARGUMENT')}}}" in body


async def test_internal_token_guards_parse_but_not_health(monkeypatch, capsys):
    handle = await serve(ParserSettings(grpc_addr="127.0.0.1:0", metrics_port=0, internal_token="s3cret"))
    try:
        async with grpc.aio.insecure_channel(handle.address) as opened:
            stub = prompt_pb2_grpc.PromptParserStub(opened)
            request = prompt_pb2.ParseRequest(text="a park")
            for metadata in ((), (("x-multipass-internal", "wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Parse(request, metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = await stub.Parse(request, metadata=(("x-multipass-internal", "s3cret"),))
            assert response.parsed.base_prompt == "a park"
            health = await health_pb2_grpc.HealthStub(opened).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        monkeypatch.setenv("MULTIPASS_INTERNAL_TOKEN", "s3cret")
        assert await asyncio.to_thread(cli_main, ["parse", "--addr", handle.address, "a park"]) == 0
        assert capsys.readouterr().out.startswith("single pass")
        monkeypatch.setenv("MULTIPASS_INTERNAL_TOKEN", "wrong")
        assert await asyncio.to_thread(cli_main, ["parse", "--addr", handle.address, "a park"]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
    finally:
        await handle.stop(grace=1)


async def test_stop_answers_not_serving_then_closes():
    handle = await serve(ParserSettings(grpc_addr="127.0.0.1:0", metrics_port=0))
    async with grpc.aio.insecure_channel(handle.address) as opened:
        await handle.stop(grace=1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prompt_pb2_grpc.PromptParserStub(opened).Parse(
                prompt_pb2.ParseRequest(text="a park"), timeout=2
            )
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_cli_through_addr(parser, capsys):
    status = await asyncio.to_thread(
        cli_main, ["parse", "--json", "--addr", parser.address, "-f", str(EXAMPLES / "multi-person.prompt")]
    )
    assert status == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["loras"][0]["tune_id"] for p in shown["persons"]] == ["849330", "861629"]
    status = await asyncio.to_thread(
        cli_main, ["parse", "--addr", parser.address, "a park", "--param", "steps=0"]
    )
    assert status == 2
    assert "params.steps: got '0' in the request; allowed: an integer in 1..50" in capsys.readouterr().err


TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "a park",
                " BREAK ",
                "<lora:1:1>",
                "<lora:1",
                " --mask_prompt x",
                " --zz",
                "\nsteps=3",
                "\nstesp=3",
                "\ninput_image_url=https://e.com/a",
                "ohwx man",
                "\n",
                "(x:1.2)",
            ]
        ),
        max_size=12,
    ).map("".join),
)
PARAMS = st.dictionaries(
    st.one_of(
        st.sampled_from(["steps", "seed", "w", "controlnet", "negative_prompt", "x"]), st.text(max_size=8)
    ),
    st.text(max_size=12),
    max_size=4,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=TEXTS, params=PARAMS, has_input_image=st.booleans())
async def test_through_grpc_every_input_is_ok_or_invalid_argument(channel, text, params, has_input_image):
    stub = prompt_pb2_grpc.PromptParserStub(channel)
    try:
        response = await stub.Parse(
            prompt_pb2.ParseRequest(text=text, params=params, has_input_image=has_input_image), timeout=10
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert field_violations(error)
    else:
        assert response.HasField("parsed")


def test_process_serves_and_stops_on_sigterm(tmp_path):
    env = {
        **os.environ,
        "MULTIPASS_PARSER_GRPC_ADDR": "127.0.0.1:0",
        "MULTIPASS_PARSER_METRICS_PORT": "0",
        "MULTIPASS_LOG_LEVEL": "INFO",
        "MULTIPASS_INTERNAL_TOKEN": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "multipass_prompt_parser"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        port = None
        for line in process.stdout:
            entry = json.loads(line)
            assert entry["service"] == "prompt-parser"
            if entry["message"] == "prompt parser serving":
                port = entry["port"]
                break
        assert port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
            response = prompt_pb2_grpc.PromptParserStub(opened).Parse(
                prompt_pb2.ParseRequest(text="a park"), timeout=10
            )
        assert response.parsed.base_prompt == "a park"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = [json.loads(line)["message"] for line in process.stdout]
        assert "prompt parser stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_process_refuses_bad_settings():
    env = {**os.environ, "MULTIPASS_NATIVE_SIZE": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "multipass_prompt_parser"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "MULTIPASS_NATIVE_SIZE" in done.stderr
