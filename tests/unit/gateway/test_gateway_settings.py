"""Gateway settings: defaults, every variable read, bad values named."""

from __future__ import annotations

import ipaddress
import json

import pytest
from gateway_helpers import parsed_prompt

from multipass.errors import ConfigError, InvalidInput
from multipass.store import PublicEndpoint
from multipass.v1 import jobs_pb2
from multipass_gateway.app.job_inputs import scene_size
from multipass_gateway.app.submission import (
    check_request,
    idempotency_kv_key,
    job_id_time,
    new_job_id,
)
from multipass_gateway.domain.tune_checks import check_metadata
from multipass_gateway.domain.tune_files import check_safetensors
from multipass_gateway.infra.tune_store import (
    new_tune_id,
    page_token,
    parse_page_token,
)
from multipass_gateway.settings import GatewaySettings, PassTuning


def test_defaults():
    settings = GatewaySettings.from_env({})
    assert settings.grpc_address == "127.0.0.1:50050"
    assert settings.parser_target == "127.0.0.1:50051"
    assert settings.segmentation_target == "127.0.0.1:50052"
    assert settings.diffusion_target == "127.0.0.1:50053"
    assert settings.metrics_port == 9100
    assert settings.admin_token == "" and settings.callbacks.signing_key == ""
    assert settings.fetch_allow.hosts == frozenset() and settings.fetch_allow.networks == ()


def test_values_and_allow_list():
    settings = GatewaySettings.from_env(
        {
            "MULTIPASS_GATEWAY_GRPC_ADDR": "0.0.0.0:7000",
            "MULTIPASS_PARSER_GRPC_ADDR": "127.0.0.1:6001",
            "MULTIPASS_DIFFUSION_TARGET": "diffusion:50053",
            "MULTIPASS_ADMIN_TOKEN": "admin-secret-42",
            "MULTIPASS_CALLBACK_SIGNING_KEY": "signing-secret-42",
            "MULTIPASS_FETCH_ALLOW_HOSTS": "127.0.0.1, minio.local,[::1]",
            "MULTIPASS_FETCH_ALLOW_CIDRS": "10.0.0.0/8",
            "MULTIPASS_GATEWAY_BASE_MODEL": "tiny-sd15",
            "MULTIPASS_GATEWAY_TENANT_MAX_PENDING_PASSES": "7",
        }
    )
    assert settings.grpc_address == "0.0.0.0:7000"
    assert settings.parser_target == "127.0.0.1:6001"  # the parser's own address is the default target
    assert settings.diffusion_target == "diffusion:50053"
    assert settings.fetch_allow.hosts == frozenset({"minio.local"})
    assert set(settings.fetch_allow.networks) == {
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    }
    assert settings.limits.tenant_max_pending_passes == 7
    assert "admin-secret-42" not in repr(settings) and "signing-secret-42" not in repr(settings)


def test_bad_variables_are_named_together():
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env(
            {
                "MULTIPASS_GATEWAY_GRPC_ADDR": "nope",
                "MULTIPASS_GATEWAY_METRICS_PORT": "x",
                "MULTIPASS_NATS_URL": "http://x",
            }
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {"MULTIPASS_GATEWAY_GRPC_ADDR", "MULTIPASS_GATEWAY_METRICS_PORT", "MULTIPASS_NATS_URL"}
    with pytest.raises(ConfigError, match="MULTIPASS_FETCH_ALLOW_CIDRS"):
        GatewaySettings.from_env({"MULTIPASS_FETCH_ALLOW_CIDRS": "not-a-network"})
    with pytest.raises(ConfigError, match="MULTIPASS_GATEWAY_BASE_MODEL"):
        GatewaySettings.from_env({"MULTIPASS_GATEWAY_BASE_MODEL": "a.b"})
    for too_broad in ("http://http-api:8080", "http://http-api:8080/", "http://u:p@h/x", "file:///x"):
        with pytest.raises(ConfigError, match="MULTIPASS_CALLBACK_TRUSTED_PREFIXES"):
            GatewaySettings.from_env({"MULTIPASS_CALLBACK_TRUSTED_PREFIXES": too_broad})


def test_the_scene_side_cap_stops_at_the_longest_side_a_worker_makes():
    """An input image fitted under a larger MULTIPASS_GATEWAY_MAX_SIDE would be planned at a size every
    diffusion pass refuses, failing the job mid-way instead of at start."""
    assert GatewaySettings.from_env({"MULTIPASS_GATEWAY_MAX_SIDE": "4096"}).max_side == 4096
    with pytest.raises(ConfigError, match="MULTIPASS_GATEWAY_MAX_SIDE"):
        GatewaySettings.from_env({"MULTIPASS_GATEWAY_MAX_SIDE": "6144"})


def test_trusted_callback_prefixes_are_parsed_urls():
    relay = "http://http-api:8080/astria/callbacks/prompt"
    (prefix,) = GatewaySettings.from_env(
        {"MULTIPASS_CALLBACK_TRUSTED_PREFIXES": relay}
    ).callbacks.trusted_prefixes
    assert (prefix.scheme, prefix.host, prefix.port, prefix.path) == (
        "http",
        "http-api",
        8080,
        "/astria/callbacks/prompt",
    )
    assert GatewaySettings.from_env({}).callbacks.trusted_prefixes == ()


def test_person_and_face_pass_tuning_is_read_once_and_bounded():
    assert GatewaySettings.from_env({}).pass_tuning == PassTuning()
    tuned = GatewaySettings.from_env(
        {
            "MULTIPASS_GATEWAY_CROP_PADDING": "64",
            "MULTIPASS_GATEWAY_CROP_FACTOR": "2",
            "MULTIPASS_GATEWAY_MASK_BLUR": "0",
            "MULTIPASS_GATEWAY_FACES_DENOISING_STRENGTH": "0.3",
            "MULTIPASS_GATEWAY_PERSON_POSE_SCALE": "1.2",
            "MULTIPASS_GATEWAY_FACES_MIN_AREA_RATIO": "0.002",
            "MULTIPASS_GATEWAY_FACES_MAX_COUNT": "4",
        }
    ).pass_tuning
    assert tuned == PassTuning(
        crop_padding=64,
        crop_factor=2.0,
        mask_blur=0.0,
        faces_denoising_strength=0.3,
        person_pose_scale=1.2,
        faces_min_area_ratio=0.002,
        faces_max_count=4,
    )
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env(
            {"MULTIPASS_GATEWAY_CROP_PADDING": "0", "MULTIPASS_GATEWAY_FACES_DENOISING_STRENGTH": "1.5"}
        )
    assert {v.field for v in caught.value.violations} == {
        "MULTIPASS_GATEWAY_CROP_PADDING",
        "MULTIPASS_GATEWAY_FACES_DENOISING_STRENGTH",
    }


def test_job_ids_sort_by_time_and_encode_it():
    first = new_job_id()
    second = new_job_id()
    assert len(first) == 24 and first[:12] <= second[:12]
    assert abs(job_id_time(first) - __import__("time").time()) < 5
    assert job_id_time("zz") is None


def test_request_checks_name_fields():
    request = jobs_pb2.SubmitJobRequest(
        idempotency_key="has space", input_image_id="../x", mask_image_id="0" * 24
    )
    assert {v.field for v in check_request(request)} == {"idempotency_key", "input_image_id"}
    assert idempotency_kv_key("t1", "k") != idempotency_kv_key("t2", "k")
    assert idempotency_kv_key("t1", "k").startswith("t1.")


def test_scene_size():
    plain = parsed_prompt(0, w=768, h=512)
    assert scene_size(plain, None, "sd15", 2048) == (768, 512)
    keep = parsed_prompt(1, base="", common="", keep_background=True)
    assert scene_size(keep, (4000, 3000), "sd15", 2048) == (2048, 1536)
    # img2img without an explicit size: the input's aspect at the parsed area.
    img2img = parsed_prompt(0, w=512, h=512)
    width, height = scene_size(img2img, (1600, 900), "sd15", 2048)
    assert width % 8 == 0 and height % 8 == 0 and abs(width / height - 16 / 9) < 0.05
    assert abs(width * height - 512 * 512) < 0.1 * 512 * 512
    explicit = parsed_prompt(0, w=640, h=640, explicit=("w", "h"))
    assert scene_size(explicit, (1600, 900), "sd15", 2048) == (640, 640)


@pytest.mark.parametrize(("size", "expected"), [((2048, 2048), (2048, 2048)), ((1000, 600), (1000, 600)),
                                                ((4000, 3000), (2048, 1536)), ((333, 250), (328, 248))])  # fmt: skip
def test_only_upscale_keeps_the_inputs_own_pixels(size, expected):
    # It used to be brought to the native area first (2048x2048 -> 512x512 -> x4), losing resolution.
    upscale = parsed_prompt(0, base="", common="", only_upscale=True)
    assert scene_size(upscale, size, "sd15", 2048) == expected
    explicit = parsed_prompt(0, base="", common="", only_upscale=True, w=640, h=640, explicit=("w", "h"))
    assert scene_size(explicit, size, "sd15", 2048) == (640, 640)


def test_tune_metadata_checks():
    good = jobs_pb2.TuneMetadata(token="ohwx", class_name="woman", base_family="sd15")
    assert check_metadata(good, streamed=True) == []
    bad = jobs_pb2.TuneMetadata(
        token="O H",
        class_name="",
        base_family="sd3",
        kind="pickle",
        sha256="xyz",
        reference_image_ids=["nope"],
    )
    fields = {v.field for v in check_metadata(bad, streamed=False)}
    assert fields == {
        "metadata.token",
        "metadata.class_name",
        "metadata.base_family",
        "metadata.kind",
        "metadata.sha256",
        "chunk",
        "metadata.reference_image_ids[0]",
    }
    both = jobs_pb2.TuneMetadata(token="ohwx", class_name="man", base_family="sdxl", url="https://x/y")
    assert {v.field for v in check_metadata(both, streamed=True)} == {"metadata.url"}


def test_only_safetensors_files_are_accepted():
    header = b'{"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    check_safetensors(len(header).to_bytes(8, "little") + header + b"\x00" * 4, "chunk")
    for data in (
        b"",
        b"PK\x03\x04" + b"\x00" * 100,
        b"\x80\x02}q\x00" + b"\x00" * 100,
        (5).to_bytes(8, "little") + b"not json!!",
    ):
        with pytest.raises(InvalidInput):
            check_safetensors(data, "chunk")


def test_tune_ids_are_digits_and_page_tokens_round_trip():
    tune_id = new_tune_id()
    assert tune_id.isdigit() and len(tune_id) == 16
    assert parse_page_token(page_token(tune_id)) == tune_id
    assert parse_page_token("") == ""
    with pytest.raises(InvalidInput):
        parse_page_token("garbage")


def test_entry_point_fails_fast_naming_the_bad_variable():
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "MULTIPASS_GATEWAY_GRPC_ADDR": "no-port-here",
        "MULTIPASS_FETCH_ALLOW_CIDRS": "10.0.0.0/8",
    }
    result = subprocess.run(
        [sys.executable, "-m", "multipass_gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "MULTIPASS_GATEWAY_GRPC_ADDR" in result.stdout


def test_the_public_s3_endpoint_defaults_to_the_internal_one_and_is_parsed():
    assert GatewaySettings.from_env({}).s3_public_endpoint is None
    https = GatewaySettings.from_env({"MULTIPASS_S3_PUBLIC_ENDPOINT": "https://downloads.example.com"})
    assert https.s3_public_endpoint == PublicEndpoint(host="downloads.example.com", secure=True)
    http = GatewaySettings.from_env({"MULTIPASS_S3_PUBLIC_ENDPOINT": "http://localhost:9000"})
    assert http.s3_public_endpoint == PublicEndpoint(host="localhost:9000", secure=False)
    assert http.s3_public_endpoint.url == "http://localhost:9000"


@pytest.mark.parametrize(
    "value",
    [
        "localhost:9000",
        "ftp://files.example.com",
        "http://x/bucket",
        "http://user:pw@x",
        "http://x:0",
        "http://x:",
    ],
)
def test_a_bad_public_s3_endpoint_is_named(value):
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env({"MULTIPASS_S3_PUBLIC_ENDPOINT": value})
    assert [v.field for v in caught.value.violations] == ["MULTIPASS_S3_PUBLIC_ENDPOINT"]
    assert repr(value) in caught.value.violations[0].description


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


LORA = "lora_unet_x.lora_down.weight"


@pytest.mark.parametrize(
    ("header", "data", "problem"),
    [
        ({}, b"", "holds no tensors"),
        ({"__metadata__": {"format": "pt"}}, b"", "holds no tensors"),
        ({"__metadata__": {"rank": 4}, LORA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
         "__metadata__ is not a map of strings to strings"),
        ({LORA: "F32"}, b"\0" * 4, "is not described by a JSON object"),
        ({LORA: {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "has dtype 'Q99'"),
        ({LORA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000]}}, b"\0" * 4, "outside the 4 data bytes"),
        ({LORA: {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
        ({LORA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "lora_unet_y.lora_up.weight": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8,
         "overlaps the tensor before it"),
        ({LORA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12, "cover 4 of the 12 data bytes"),
    ],
)  # fmt: skip
def test_a_safetensors_header_that_lies_about_its_data_is_refused(header, data, problem):
    with pytest.raises(InvalidInput) as caught:
        check_safetensors(safetensors_bytes(header, data), "chunk")
    (violation,) = caught.value.violations
    assert violation.field == "chunk" and violation.description.startswith("is a damaged safetensors file: ")
    assert problem in violation.description


@pytest.mark.parametrize(
    "name",
    [
        "lora_unet_x.lora_down.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_down.weight",
        "model.diffusion_model.input_blocks.0.0.weight",
        "unet.conv_in.weight",
    ],
)
def test_every_format_the_workers_load_is_taken(name):
    check_safetensors(
        safetensors_bytes({name: {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "chunk"
    )


def test_tensors_of_no_known_format_are_refused_naming_one():
    data = safetensors_bytes(
        {"foo.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    with pytest.raises(InvalidInput) as caught:
        check_safetensors(data, "chunk")
    assert (
        "is in no tune format the workers load (tensors such as 'foo.weight')"
        in caught.value.violations[0].description
    )


@pytest.mark.parametrize(
    ("name", "shape", "family", "problem"),
    [
        ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", [4, 1280], "sd15",
         "second text encoder"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight", [4, 2048], "sd15",
         "2048-wide inputs, as sdxl models do"),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", [4, 768], "sdxl",
         "768-wide inputs, as sd15 models do"),
    ],
)  # fmt: skip
def test_a_tune_whose_tensors_tell_another_family_is_refused_at_registration(name, shape, family, problem):
    size = 2 * shape[0] * shape[1]
    data = safetensors_bytes(
        {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, size]}}, b"\0" * size
    )
    with pytest.raises(InvalidInput) as caught:
        check_safetensors(data, "chunk", family)
    (violation,) = caught.value.violations
    assert violation.field == "metadata.base_family" and problem in violation.description
    check_safetensors(data, "chunk", "sdxl" if family == "sd15" else "sd15")  # the family it is


def test_tiny_widths_tell_no_family():
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    data = safetensors_bytes(
        {name: {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}, b"\0" * 256
    )
    check_safetensors(data, "chunk", "sd15")
    check_safetensors(data, "chunk", "sdxl")


def test_parser_violations_are_named_by_the_submit_requests_own_fields():
    from multipass.errors import Violation
    from multipass_gateway.app.submission import in_request_terms

    parsed_error = InvalidInput.of(
        [
            Violation("text", "the prompt has no text"),
            Violation("params.mask_image_url", "a mask image needs an input image"),
            Violation("params.steps", "got 99"),
        ]
    )
    by_id = in_request_terms(parsed_error, jobs_pb2.SubmitJobRequest(mask_image_id="img-1"))
    assert [v.field for v in by_id.violations] == ["prompt", "mask_image_id", "params.steps"]
    by_url = in_request_terms(parsed_error, jobs_pb2.SubmitJobRequest())
    assert [v.field for v in by_url.violations] == ["prompt", "params.mask_image_url", "params.steps"]
    assert "invalid request" in str(by_id) or "prompt" in str(by_id)


def test_a_bad_idempotency_key_is_echoed_with_what_is_allowed():
    (problem,) = check_request(jobs_pb2.SubmitJobRequest(idempotency_key="has space"))
    assert problem.field == "idempotency_key"
    assert "'has space'" in problem.description and "printable ASCII" in problem.description
