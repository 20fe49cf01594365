"""The upscale pass (super_resolution): published upscaler files of every architecture, tiles with
feathered seams, bounded tile size, refused files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from finishing_testkit import SD15_MODEL, pixels, scene, spec
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_dev.tiny_models import image_nets
from multipass_diffusion.imaging.tiling import tile_grid
from multipass_diffusion.nets.upscalers import SpandrelUpscaler, load_upscaler
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.passes.upscale import target_size

TILED = {"upscale_tile": "32", "upscale_tile_overlap": "16"}

#: (file name, state builder, .pth wrapper, architecture spandrel must detect, scale): each in the layout
#: its project publishes (Real-ESRGAN and HAT: params_ema; SwinIR: params; ESRGAN's original releases: bare).
PUBLISHED = [
    ("RealESRGAN_x4plus.pth", lambda: image_nets.esrgan_state(scale=4), "params_ema", "ESRGAN", 4),
    ("RealESRGAN_x2plus.pth", lambda: image_nets.esrgan_state(scale=2), "params_ema", "ESRGAN", 2),
    ("4x_ESRGAN.pth", lambda: image_nets.esrgan_state(scale=4, layout="original"), None, "ESRGAN", 4),
    ("4x-UltraSharp.safetensors", lambda: image_nets.esrgan_state(scale=4), None, "ESRGAN", 4),
    ("SwinIR_x2.pth", lambda: image_nets.swinir_state(scale=2), "params", "SwinIR", 2),
    ("SwinIR_x4.safetensors", lambda: image_nets.swinir_state(scale=4), None, "SwinIR", 4),
    ("HAT_SRx4.pth", lambda: image_nets.hat_state(scale=4), "params_ema", "HAT", 4),
    ("DAT_x2.safetensors", lambda: image_nets.dat_state(scale=2), None, "DAT", 2),
    ("DAT_x4.pth", lambda: image_nets.dat_state(scale=4), "params", "DAT", 4),
]


def model_dir_with(root: Path, component: str, name: str, state: dict, wrapper: str | None = None) -> Path:
    image_nets.save_weights(state, root / "diffusion" / component / name, wrapper=wrapper)
    return root


@pytest.mark.parametrize(("name", "build", "wrapper", "architecture", "scale"), PUBLISHED)
def test_published_upscaler_files_load_with_their_architecture_and_scale(
    engine, tmp_path, monkeypatch, name, build, wrapper, architecture, scale
):
    root = model_dir_with(tmp_path, "upscaler", name, build(), wrapper)
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", root)
    output = engine.run(spec("upscale"), PassInputs(image=scene(24, 20)))
    assert output.image.size == (24 * scale, 20 * scale)
    assert output.metadata["upscaler"] == "SpandrelUpscaler"
    assert output.metadata["upscaler_architecture"] == architecture
    assert output.metadata["model_scale"] == str(scale)


def test_the_real_esrgan_and_the_original_esrgan_layouts_are_the_same_network(tmp_path):
    """The same weights under BasicSR names and under ESRGAN's original names upscale identically."""
    basicsr = image_nets.esrgan_state(scale=4, seed=5)
    original = image_nets.esrgan_state(scale=4, seed=5, layout="original")
    assert "body.0.rdb1.conv1.weight" in basicsr and "model.1.sub.0.RDB1.conv1.0.weight" in original
    array = np.asarray(scene(20, 16))
    results = []
    for layout, state in (("basicsr", basicsr), ("original", original)):
        path = image_nets.save_weights(state, tmp_path / layout / "x4.pth", wrapper="params_ema")
        upscaler = SpandrelUpscaler(path, device="cpu", dtype=torch.float32)
        results.append(upscaler.run(array, spec("upscale"), _Monitor()))
    assert results[0].shape == (64, 80, 3)
    assert np.array_equal(results[0], results[1])


class _Monitor:
    def check(self) -> None:
        pass


def test_a_half_precision_request_falls_back_for_an_architecture_without_it(tmp_path):
    path = image_nets.save_weights(image_nets.swinir_state(scale=2), tmp_path / "swinir.safetensors")
    upscaler = SpandrelUpscaler(path, device="cpu", dtype=torch.float16)
    assert upscaler.dtype == torch.float32
    esrgan = image_nets.save_weights(image_nets.esrgan_state(), tmp_path / "esrgan.safetensors")
    assert SpandrelUpscaler(esrgan, device="cpu", dtype=torch.float16).dtype == torch.float16


def test_target_size_scales_and_caps():
    assert target_size((40, 30), 4) == ((160, 120), False)
    assert target_size((1500, 1000), 4, cap=4096) == ((4096, 2730), True)


def test_upscale_multiplies_the_size_by_four(engine):
    output = engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))
    assert output.image.size == (160, 128)
    assert output.metadata["upscaler"] == "SpandrelUpscaler"
    assert output.metadata["upscaler_architecture"] == "ESRGAN"
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
    run = SpandrelUpscaler.run

    def recording(self, array, spec, monitor):
        seen.append(array.shape[:2])
        return run(self, array, spec, monitor)

    monkeypatch.setattr(SpandrelUpscaler, "run", recording)
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


def test_a_missing_upscaler_fails_naming_the_directory(engine, tmp_path, monkeypatch):
    directory = tmp_path / "diffusion" / "upscaler"
    directory.mkdir(parents=True)
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))
    assert f"{directory} holds no weights file (*.pth or *.safetensors)" in str(caught.value)


def test_two_weights_files_are_ambiguous_and_refused_naming_both(engine, tmp_path, monkeypatch):
    for name in ("a.pth", "b.safetensors"):
        model_dir_with(tmp_path, "upscaler", name, image_nets.esrgan_state())
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(
        FailedPrecondition, match=r"holds 2 weights files \(a.pth, b.safetensors\); keep exactly one"
    ):
        engine.run(spec("upscale"), PassInputs(image=scene(40, 32)))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            lambda: {"encoder.weight": torch.zeros(4, 3, 3, 3)},
            "the upscaler's architecture is not one spandrel recognises",
        ),
        (lambda: image_nets.restoreformer_state(), "is a RestoreFormer model for FaceSR, not a upscaler"),
        (
            lambda: {**image_nets.esrgan_state(), "conv_first.weight": torch.zeros(8, 3, 5, 5)},
            "cannot be read as upscaler weights",
        ),
    ],
    ids=["unknown-architecture", "a-face-restorer", "wrong-shapes"],
)
def test_files_that_are_not_an_upscaler_are_refused_naming_the_file(tmp_path, state, message):
    root = model_dir_with(tmp_path, "upscaler", "model.safetensors", state())
    with pytest.raises(FailedPrecondition, match=message) as caught:
        load_upscaler(root, device="cpu", dtype=torch.float32)
    assert str(root / "diffusion" / "upscaler" / "model.safetensors") in str(caught.value)


class _Payload:
    def __reduce__(self):
        return (print, ("a pickle that runs code",))


def test_a_pickle_that_would_run_code_is_not_loaded(tmp_path):
    path = tmp_path / "diffusion" / "upscaler" / "evil.pth"
    path.parent.mkdir(parents=True)
    torch.save({"params_ema": {"conv_first.weight": _Payload()}}, str(path))
    with pytest.raises(FailedPrecondition, match="holds more than tensors") as caught:
        load_upscaler(tmp_path, device="cpu", dtype=torch.float32)
    assert "print' is forbidden" in str(caught.value)


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
