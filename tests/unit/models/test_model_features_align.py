"""The feature check reads the model directory the way the services' loaders do.

``multipass.model_catalog.layout`` keeps its own small table of rules (the runtime imports no service);
these tests run it and the loaders' own "is it installed" functions over the same directories (the tiny
test models, a directory with every profile, and odd layouts) and require the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from catalog_dirs import full_directory, write_profiles

from multipass.errors import FailedPrecondition
from multipass.model_catalog import features, layout
from multipass.model_catalog.manifest import load_manifest

COMPONENT_FEATURES = {
    "upscaler": "upscaler",
    "face_restorer": "face_restorer",
    "face_swapper": "face_swap",
    "prompt_expander": "prompt_expander",
}
TINY_MODELS = Path(__file__).resolve().parents[3] / ".multipass" / "test-models"


def odd_layouts(root: Path) -> list[Path]:
    """Directories whose answers are easy to get wrong."""
    manifest = load_manifest()
    two_upscalers = write_profiles(root / "two-upscalers", [manifest.profiles["sd15"]])
    upscaler = two_upscalers / "diffusion" / "upscaler"
    upscaler.mkdir(parents=True)
    (upscaler / "a.pth").write_bytes(b"x")
    (upscaler / "B.SAFETENSORS").write_bytes(b"x")
    diffusers_upscaler = root / "diffusers-upscaler" / "diffusion" / "upscaler"
    diffusers_upscaler.mkdir(parents=True)
    (diffusers_upscaler / "model_index.json").write_text("{}")
    named = root / "named-swapper" / "diffusion" / "face_swapper"
    named.mkdir(parents=True)
    (named / "config.json").write_text(json.dumps({"swapper": "s.onnx", "embedder": "e.onnx"}))
    (named / "s.onnx").write_bytes(b"x")
    (named / "e.onnx").write_bytes(b"x")
    broken = root / "named-missing-detector" / "diffusion" / "face_swapper"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"detector": "gone.onnx"}))
    (broken / "inswapper_128.onnx").write_bytes(b"x")
    (broken / "arcface.onnx").write_bytes(b"x")
    orphan = write_profiles(root / "orphan-controlnet", [manifest.profiles["controlnet-sd15"]])
    legacy = write_profiles(root / "legacy-controlnet", [manifest.profiles["sd15"]])
    (legacy / "diffusion" / "controlnet" / "canny").mkdir(parents=True)
    (legacy / "diffusion" / "controlnet" / "canny" / "config.json").write_text("{}")
    expander = root / "expander-bin" / "diffusion" / "prompt_expander"
    expander.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "pytorch_model.bin"):
        (expander / name).write_text("{}")
    return [
        two_upscalers,
        root / "diffusers-upscaler",
        root / "named-swapper",
        root / "named-missing-detector",
        orphan,
        legacy,
        root / "expander-bin",
    ]


@pytest.fixture(scope="module")
def directories(tmp_path_factory) -> list[Path]:
    from multipass_dev.tiny_models import build_tiny_models

    root = tmp_path_factory.mktemp("layouts")
    build_tiny_models(TINY_MODELS)
    return [
        TINY_MODELS,
        full_directory(root / "full", load_manifest()),
        root / "empty",
        *odd_layouts(root),
    ]


def test_the_diffusion_worker_finds_what_the_check_reports(directories):
    from multipass_diffusion import composition, faceid, models
    from multipass_diffusion.nets import components
    from multipass_diffusion.nets.face_embedding import reference_detector_file
    from multipass_diffusion.preprocessors import Preprocessors

    for model_dir in directories:
        report = features.check(model_dir).by_name()
        available = {name for name, f in report.items() if f.available}
        installed = set(components.installed_capabilities(model_dir))
        assert installed == {c for c, f in COMPONENT_FEATURES.items() if f in available}, model_dir

        entries = models.discover(model_dir)
        assert {n: e.family for n, e in entries.items()} == layout.base_models(model_dir), model_dir
        assert ("base" in available) == bool(entries), model_dir
        assert ("inpaint" in available) == any(e.inpaint_unet_path for e in entries.values()), model_dir

        served = {e.family for e in entries.values()}
        for kind in layout.CONTROLNET_KINDS:
            for family in ("sd15", "sdxl"):
                loader = models.controlnet_path(model_dir, family, kind)
                ours = layout.controlnet_dirs(model_dir, family, kind)
                assert loader == (ours[0] if ours else None), (model_dir, family, kind)
            usable = any(models.controlnet_path(model_dir, family, kind) for family in served)
            assert (f"controlnet:{kind}" in available) == usable, (model_dir, kind)

        assert ("faceid" in available) == any(faceid.installed(model_dir, family) for family in served), (
            model_dir
        )
        assert (layout.COMPOSITION in available) == any(
            composition.installed(model_dir, family) for family in served
        ), model_dir
        for family in ("sd15", "sdxl"):
            assert composition.weights_path(model_dir, family) == layout.composition_weights(
                model_dir, family
            )
        assert reference_detector_file(model_dir) == layout.reference_detector(model_dir), model_dir
        if "face_swap" in available:  # the embedder it needs loads (a named detector is there)
            detector = reference_detector_file(model_dir)
            assert detector is None or detector.is_file(), model_dir
        preprocessors = Preprocessors(model_dir / "diffusion" / "preprocessors").installed()
        assert set(preprocessors) == {
            kind for kind in layout.PREPROCESSOR_FILES if f"preprocessor:{kind}" in available
        }, model_dir


def test_the_segmentation_service_finds_what_the_check_reports(directories):
    from multipass_segmentation import models

    assert layout.TEXT_DETECTORS == models.SUPPORTED_DETECTORS
    assert layout.SAM_VARIANTS == models.SAM_VARIANTS
    for model_dir in directories:
        report = features.check(model_dir, services=[features.SEGMENTATION]).by_name()
        try:
            weights, _ = models.find_sam_checkpoint(model_dir / "segmentation" / "sam")
        except FailedPrecondition:
            weights = None
        sam = report["sam"]
        assert sam.available == (weights is not None and weights.is_file()), model_dir
        if sam.available:
            assert model_dir / sam.path == weights
        config = model_dir / "segmentation" / "grounding" / "config.json"
        supported = (
            config.is_file()
            and json.loads(config.read_text()).get("model_type") in models.SUPPORTED_DETECTORS
        )
        assert report["text_masks"].available == supported, model_dir


def _checkpoint(path: Path, names: list[str]) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: np.zeros(2, dtype=np.float32) for name in names}, str(path))
    return path


def test_a_single_file_checkpoint_is_a_base_model_for_the_check_as_for_the_worker(tmp_path):
    from multipass_diffusion import models

    _checkpoint(
        tmp_path / "diffusion" / "dreamshaper_8.safetensors",
        [
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "model.diffusion_model.out.2.bias",
        ],
    )
    (tmp_path / "diffusion" / "dreamshaper_8.config").mkdir()  # its optional configs: never a model
    (tmp_path / "diffusion" / "dreamshaper_8.config" / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )

    base = features.check(tmp_path).by_name()["base"]

    assert base.available and base.path == "diffusion/dreamshaper_8.safetensors", base
    assert layout.base_models(tmp_path) == {"dreamshaper_8": "sd15"}
    assert {n: e.family for n, e in models.discover(tmp_path).items()} == {"dreamshaper_8": "sd15"}
    assert features.check(tmp_path).by_name()["controlnet:canny"].fix == (
        "multipass models pull controlnet-sd15"
    )


def test_a_checkpoint_the_worker_refuses_is_no_base_model_for_the_check(tmp_path):
    from multipass_diffusion import models

    path = _checkpoint(
        tmp_path / "diffusion" / "sd21.safetensors", ["cond_stage_model.model.token_embedding.weight"]
    )

    base = features.check(tmp_path).by_name()["base"]

    assert not base.available and "is an SD2.x checkpoint" in base.detail, base
    with pytest.raises(FailedPrecondition, match="is an SD2.x checkpoint") as caught:
        models.discover(tmp_path)
    assert str(path) in str(caught.value)


def test_a_half_pulled_pipeline_is_missing_for_the_check_and_the_worker_names_what_it_lacks(tmp_path):
    from multipass_diffusion import models

    write_profiles(tmp_path, [load_manifest().profiles["sd15"]])
    assert features.check(tmp_path).by_name()["base"].available
    (tmp_path / "diffusion/sd15/unet/diffusion_pytorch_model.safetensors").unlink()

    base = features.check(tmp_path).by_name()["base"]

    assert not base.available, base
    assert "incomplete" in base.detail and "unet/diffusion_pytorch_model.safetensors" in base.detail
    assert base.fix == "multipass models pull sd15"
    with pytest.raises(FailedPrecondition, match="unet/diffusion_pytorch_model.safetensors") as caught:
        models.discover(tmp_path)
    assert "is incomplete" in str(caught.value) and "multipass models pull" in str(caught.value)


def test_a_pipeline_with_only_fp16_weights_is_named_with_the_file_to_rename(tmp_path):
    write_profiles(tmp_path, [load_manifest().profiles["sd15"]])
    vae = tmp_path / "diffusion/sd15/vae"
    (vae / "diffusion_pytorch_model.safetensors").rename(vae / "diffusion_pytorch_model.fp16.safetensors")

    base = features.check(tmp_path).by_name()["base"]

    assert not base.available
    assert "found only diffusion_pytorch_model.fp16.safetensors" in base.detail, base.detail
