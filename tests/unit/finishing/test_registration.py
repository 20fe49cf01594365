"""The finishing passes in the engine's registry, their hooks, and the installed-capabilities check."""

from __future__ import annotations

import shutil

import pytest

from multipass.errors import FailedPrecondition
from multipass_diffusion import finishing
from multipass_diffusion.finishing import components


def test_register_hands_every_kind_to_the_registry():
    collected = []
    finishing.register(collected.append)
    assert [handler.kind for handler in collected] == list(finishing.KINDS)
    for handler in collected:
        assert callable(handler.validate) and callable(handler.run)


def test_the_engine_runs_and_reports_the_finishing_passes(engine):
    from multipass_diffusion import passes

    assert set(finishing.KINDS) <= set(passes.kinds())
    capabilities = engine.capabilities()
    for kind in finishing.KINDS:
        assert f"pass:{kind}" in capabilities
    for component in components.COMPONENTS:
        assert component in capabilities


def test_all_tiny_components_are_installed(model_root):
    assert finishing.installed_capabilities(model_root) == list(components.COMPONENTS)


def test_capabilities_follow_the_files(model_root, tmp_path):
    assert finishing.installed_capabilities(tmp_path) == []
    source = model_root / "diffusion"
    for name in ("upscaler", "face_swapper"):
        shutil.copytree(source / name, tmp_path / "diffusion" / name)
    assert finishing.installed_capabilities(tmp_path) == ["upscaler", "face_swapper"]
    (tmp_path / "diffusion" / "face_swapper" / "arcface.onnx").unlink()
    assert finishing.installed_capabilities(tmp_path) == ["upscaler"]
    with pytest.raises(FailedPrecondition) as caught:
        components.require(tmp_path, "face_swapper", needed_by="the face_swap pass")
    assert str(tmp_path / "diffusion" / "face_swapper" / "arcface.onnx") in str(caught.value)


def test_a_diffusers_upscaler_directory_counts_as_installed(tmp_path):
    directory = tmp_path / "diffusion" / "upscaler"
    directory.mkdir(parents=True)
    (directory / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    assert finishing.installed_capabilities(tmp_path) == ["upscaler"]


def test_cache_parts_change_with_the_component_weights(model_root, tmp_path):
    from finishing_testkit import spec

    from multipass_diffusion.finishing.super_resolution import UpscalePass

    shutil.copytree(model_root / "diffusion" / "upscaler", tmp_path / "diffusion" / "upscaler")
    handler = UpscalePass()
    before = handler.cache_parts(spec("upscale"), tmp_path)
    (tmp_path / "diffusion" / "upscaler" / "config.json").write_text('{"num_feat": 16}')
    assert handler.cache_parts(spec("upscale"), tmp_path) != before
    assert before[0].startswith("multipass-finishing-")
