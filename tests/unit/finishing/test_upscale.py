"""The upscale pass (super_resolution): RRDBNet x4, tiles with feathered seams, bounded tile size."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from finishing_testkit import SD15_MODEL, pixels, scene, spec
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_diffusion.imaging.tiling import tile_grid
from multipass_diffusion.nets.rrdbnet import RRDBConfig, RRDBNet
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.passes.upscale import target_size

TILED = {"upscale_tile": "32", "upscale_tile_overlap": "16"}


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_scales_by_its_factor_with_basicsr_parameter_names(scale):
    torch.manual_seed(0)
    net = RRDBNet(RRDBConfig(num_feat=4, num_block=1, num_grow_ch=4, scale=scale)).eval()
    with torch.no_grad():
        output = net(torch.rand(1, 3, 16, 12))
    assert output.shape == (1, 3, 16 * scale, 12 * scale)
    names = set(net.state_dict())
    assert {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.bias"} <= names


def test_target_size_scales_and_caps():
    assert target_size((40, 30), 4) == ((160, 120), False)
    assert target_size((1500, 1000), 4, cap=4096) == ((4096, 2730), True)


def test_upscale_multiplies_the_size_by_four(engine):
    output = engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))
    assert output.image.size == (160, 128)
    assert output.metadata["upscaler"] == "EsrganUpscaler"
    assert output.metadata["tiled"] == "no"


def test_a_smaller_scale_resizes_the_model_output(engine):
    output = engine.run(spec("upscale", scale=2.0), PassInputs(image=scene(40, 32)))
    assert output.image.size == (80, 64)


def test_tiled_and_untiled_agree_on_a_flat_image(engine):
    flat = Image.new("RGB", (96, 80), (120, 80, 200))
    whole = engine.run(spec("upscale"), PassInputs(image=flat))
    tiled = engine.run(spec("upscale", tiled=True, options=TILED), PassInputs(image=flat))
    assert tiled.metadata["tiled"] == "yes" and int(tiled.metadata["tiles"]) == len(tile_grid(96, 80, 32, 16))
    difference = np.abs(pixels(tiled.image) - pixels(whole.image))
    assert difference.max() <= 2


def test_tiles_keep_textured_images_equal_to_the_untiled_result_and_hard_seams_would_not(engine):
    image = scene(96, 80)
    whole = pixels(engine.run(spec("upscale"), PassInputs(image=image)).image)
    tiled = pixels(engine.run(spec("upscale", tiled=True, options=TILED), PassInputs(image=image)).image)
    assert np.abs(tiled - whole).max() <= 3
    assert np.abs(tiled - whole).mean() < 0.05
    hard = {"upscale_tile": "32", "upscale_tile_overlap": "0"}
    seams = pixels(engine.run(spec("upscale", tiled=True, options=hard), PassInputs(image=image)).image)
    assert np.abs(seams - whole).max() > 20


def test_the_model_only_ever_sees_tiles_of_at_most_the_tile_size(engine, monkeypatch):
    seen = []
    forward = RRDBNet.forward

    def recording(self, x):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x)

    monkeypatch.setattr(RRDBNet, "forward", recording)
    reports = []
    output = engine.run(
        spec("upscale", tiled=True, options=TILED),
        PassInputs(image=scene(96, 80)),
        progress=lambda d, t: reports.append((d, t)),
    )
    assert output.image.size == (384, 320)
    assert len(seen) == int(output.metadata["tiles"]) > 1
    assert all(h <= 32 and w <= 32 for h, w in seen)
    assert reports[-1] == (len(seen), len(seen))


def test_bad_tile_settings_are_refused(engine):
    with pytest.raises(InvalidInput) as caught:
        engine.run(
            spec("upscale", options={"upscale_tile": "64", "upscale_tile_overlap": "40"}),
            PassInputs(image=scene(40, 32)),
        )
    assert caught.value.violations[0].field == "spec.options[upscale_tile_overlap]"


def test_a_missing_upscaler_fails_naming_the_file(engine, model_root, tmp_path, monkeypatch):
    (tmp_path / "diffusion" / "upscaler").mkdir(parents=True)
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))
    assert str(tmp_path / "diffusion" / "upscaler" / "config.json") in str(caught.value)
    shutil.copy(model_root / "diffusion" / "upscaler" / "config.json", tmp_path / "diffusion" / "upscaler")
    with pytest.raises(FailedPrecondition, match="model.safetensors"):
        engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))


@pytest.fixture(scope="module")
def diffusers_upscaler_root(model_root, tmp_path_factory):
    from multipass_dev.tiny_models.finishing import write_diffusion_upscaler

    root = tmp_path_factory.mktemp("diffusers-upscaler")
    write_diffusion_upscaler(root / "diffusion" / "upscaler", model_root / "diffusion" / SD15_MODEL)
    return root


def test_a_diffusers_upscaler_is_used_when_installed(engine, diffusers_upscaler_root, monkeypatch):
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", diffusers_upscaler_root)
    reports = []
    run = lambda seed: engine.run(  # noqa: E731
        spec("upscale", steps=3, seed=seed),
        PassInputs(image=scene(32, 24)),
        progress=lambda d, t: reports.append((d, t)),
    )
    output = run(1)
    assert output.image.size == (128, 96)
    assert output.metadata["upscaler"] == "DiffusionUpscaler"
    assert output.steps_run == 3 and reports[-1] == (3, 3)
    assert np.array_equal(pixels(output.image), pixels(run(1).image))
    assert not np.array_equal(pixels(output.image), pixels(run(2).image))


def test_the_diffusers_upscaler_tiles_too(engine, diffusers_upscaler_root, monkeypatch):
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", diffusers_upscaler_root)
    output = engine.run(spec("upscale", steps=2, tiled=True, options=TILED), PassInputs(image=scene(48, 40)))
    assert output.image.size == (192, 160)
    assert int(output.metadata["tiles"]) == len(tile_grid(48, 40, 32, 16))
    assert output.steps_run == 2 * int(output.metadata["tiles"])
