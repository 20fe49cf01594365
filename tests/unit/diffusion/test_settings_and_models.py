"""Settings from the environment, the model directory, and the tiny model factory."""

from __future__ import annotations

import json

import pytest
from diffusion_testkit import SD15_MODEL, SDXL_MODEL

from multipass.errors import ConfigError, FailedPrecondition
from multipass_dev.tiny_models.diffusion import MARKER, VERSION, build
from multipass_diffusion import models
from multipass_diffusion.settings import DiffusionSettings


def test_settings_defaults_and_overrides(model_root):
    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(model_root),
            "MULTIPASS_DIFFUSION_MODELS": "a, b",
            "MULTIPASS_DIFFUSION_PASS_CACHE": "memory",
        }
    )
    assert settings.models == ("a", "b")
    assert (settings.device, settings.dtype, settings.pass_cache) == ("auto", "auto", "memory")
    assert settings.working_size_for("sd15") == 512 and settings.working_size_for("sdxl") == 1024
    assert settings.grpc_addr == "127.0.0.1:50053" and settings.metrics_port == 9103
    assert settings.prefetch_depth == 1
    no_prefetch = {"MULTIPASS_MODEL_DIR": str(model_root), "MULTIPASS_DIFFUSION_PREFETCH": "0"}
    assert DiffusionSettings.from_env(no_prefetch).prefetch_depth == 0
    with pytest.raises(ConfigError, match="MULTIPASS_DIFFUSION_PREFETCH"):
        DiffusionSettings.from_env({**no_prefetch, "MULTIPASS_DIFFUSION_PREFETCH": "-1"})
    assert settings.png_compress_level == 1
    assert (
        DiffusionSettings.from_env(
            {**no_prefetch, "MULTIPASS_DIFFUSION_PNG_COMPRESS_LEVEL": "6"}
        ).png_compress_level
        == 6
    )
    with pytest.raises(ConfigError, match="MULTIPASS_DIFFUSION_PNG_COMPRESS_LEVEL"):
        DiffusionSettings.from_env({**no_prefetch, "MULTIPASS_DIFFUSION_PNG_COMPRESS_LEVEL": "10"})
    assert (
        DiffusionSettings.from_env(
            {"MULTIPASS_MODEL_DIR": str(model_root), "MULTIPASS_DIFFUSION_WORKING_SIZE": "96"}
        ).working_size_for("sdxl")
        == 96
    )


def test_a_dead_workers_pass_comes_back_within_seconds_and_heartbeats_keep_a_live_ones(model_root):
    """The ack wait bounds how long a killed worker's pass waits; heartbeats come well within it."""
    from multipass.bus.consume import HEARTBEATS_PER_ACK_WAIT

    settings = DiffusionSettings.from_env({"MULTIPASS_MODEL_DIR": str(model_root)})
    assert 5.0 <= settings.ack_wait_s <= 15.0
    assert settings.ack_wait_s / HEARTBEATS_PER_ACK_WAIT <= 5.0
    longer = {"MULTIPASS_MODEL_DIR": str(model_root), "MULTIPASS_DIFFUSION_ACK_WAIT_S": "90"}
    assert DiffusionSettings.from_env(longer).ack_wait_s == 90.0
    with pytest.raises(ConfigError, match="MULTIPASS_DIFFUSION_ACK_WAIT_S"):
        DiffusionSettings.from_env({**longer, "MULTIPASS_DIFFUSION_ACK_WAIT_S": "1"})


def test_bad_settings_name_every_variable(tmp_path):
    with pytest.raises(ConfigError) as raised:
        DiffusionSettings.from_env(
            {"MULTIPASS_DIFFUSION_DEVICE": "tpu", "MULTIPASS_DIFFUSION_ACK_WAIT_S": "x"}
        )
    fields = {v.field for v in raised.value.violations}
    assert fields == {"MULTIPASS_MODEL_DIR", "MULTIPASS_DIFFUSION_DEVICE", "MULTIPASS_DIFFUSION_ACK_WAIT_S"}
    with pytest.raises(ConfigError, match="MULTIPASS_MODEL_DIR"):
        DiffusionSettings.from_env({"MULTIPASS_MODEL_DIR": str(tmp_path / "absent")})


def test_discovery_and_families(model_root):
    found = models.discover(model_root)
    assert {name: entry.family for name, entry in found.items()} == {SD15_MODEL: "sd15", SDXL_MODEL: "sdxl"}
    assert found[SD15_MODEL].inpaint_unet_path is not None and found[SDXL_MODEL].inpaint_unet_path is None
    assert [e.name for e in models.select(model_root, (SDXL_MODEL,))] == [SDXL_MODEL]
    with pytest.raises(FailedPrecondition, match="sd99 not found"):
        models.select(model_root, ("sd99",))


def test_controlnet_lookup_by_family(model_root):
    assert (
        models.controlnet_path(model_root, "sd15", "canny")
        == model_root / "diffusion" / "controlnet" / "canny"
    )
    assert (
        models.controlnet_path(model_root, "sdxl", "canny")
        == model_root / "diffusion" / "controlnet" / "sdxl" / "canny"
    )
    assert models.controlnet_path(model_root, "sdxl", "depth") is None
    assert models.installed_controlnets(model_root, "sdxl") == ["pose", "canny"]


def test_fingerprint_changes_with_the_config(model_root, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_root / "diffusion" / SD15_MODEL / "scheduler", copy / "scheduler")
    before = models.fingerprint(copy)
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.02}))
    assert models.fingerprint(copy) != before


def test_the_factory_is_idempotent(model_root):
    marker = model_root / "diffusion" / MARKER
    assert marker.read_text().strip() == VERSION
    stamp = (model_root / "diffusion" / SD15_MODEL / "unet" / "config.json").stat().st_mtime_ns
    build(model_root)
    assert (model_root / "diffusion" / SD15_MODEL / "unet" / "config.json").stat().st_mtime_ns == stamp


def test_the_tiny_models_have_the_real_architectures(model_root):
    index = json.loads((model_root / "diffusion" / SDXL_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert {"text_encoder_2", "tokenizer_2"} <= set(index)
    vae = json.loads((model_root / "diffusion" / SD15_MODEL / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4  # the real x8 latent factor
    inpaint = json.loads((model_root / "diffusion" / SD15_MODEL / "unet_inpaint" / "config.json").read_text())
    assert inpaint["in_channels"] == 9
