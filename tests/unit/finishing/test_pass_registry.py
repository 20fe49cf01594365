"""The pass registry, the handlers' hooks, and the installed-capabilities check."""

from __future__ import annotations

import shutil

import pytest
from finishing_testkit import spec
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput
from multipass_diffusion.nets import components
from multipass_diffusion.nets.components import installed_capabilities
from multipass_diffusion.passes.context import PassContext, PassInputs, StepMonitor
from multipass_diffusion.passes.handler import PassHandler
from multipass_diffusion.passes.registry import HANDLERS, handler_for, kinds

FINISHING_KINDS = ("hires", "faces", "face_correct", "face_swap", "upscale", "finish")


def test_the_registry_maps_every_kind_to_its_handler_in_chain_order():
    assert list(HANDLERS) == ["base", "person", "composite", *FINISHING_KINDS]
    for kind, handler in HANDLERS.items():
        assert isinstance(handler, PassHandler)
        assert handler.kind == kind
        assert handler_for(kind) is handler
    assert kinds() == sorted(HANDLERS)


def test_an_unknown_kind_is_refused_naming_the_kinds_this_worker_runs():
    with pytest.raises(InvalidInput) as caught:
        handler_for("sharpen")
    violation = caught.value.violations[0]
    assert violation.field == "spec.kind"
    assert "'sharpen'" in violation.description and "face_swap" in violation.description


def test_the_hooks_a_kind_sets():
    assert [kind for kind, handler in HANDLERS.items() if not handler.uses_models] == ["composite"]
    assert [kind for kind, handler in HANDLERS.items() if handler.uses_faceid] == ["base", "person", "hires"]
    assert {kind: handler.component for kind, handler in HANDLERS.items() if handler.component} == {
        "face_correct": "face_restorer",
        "face_swap": "face_swapper",
        "upscale": "upscaler",
    }


class _SeedEcho(PassHandler):
    """A pass that only sets the required hooks: it returns a 1x1 image whose grey level is its seed."""

    kind = "seed_echo"

    def validate(self, spec, inputs) -> None:
        pass

    def run(self, ctx):
        return Image.new("L", (1, 1), ctx.spec.seed)


def test_the_base_class_defaults(tmp_path):
    handler = _SeedEcho()
    assert handler.uses_models and not handler.uses_faceid
    assert not handler.batch_support(spec("base"), PassInputs())
    assert handler.cache_parts(spec("base"), tmp_path) == []
    assert handler.capabilities(tmp_path) == []
    ctx = PassContext(spec("base", seed=3), PassInputs(), None, None, None, StepMonitor(), 64)
    images = handler.run_batch(ctx, [5, 9])
    assert [image.getpixel((0, 0)) for image in images] == [5, 9]
    assert ctx.spec.seed == 3
    with pytest.raises(TypeError):
        type("Incomplete", (PassHandler,), {"kind": "incomplete"})()


def test_the_engine_runs_and_reports_the_finishing_passes(engine):
    capabilities = engine.capabilities()
    for kind in HANDLERS:
        assert f"pass:{kind}" in capabilities
    for component in components.COMPONENTS:
        assert component in capabilities


def test_all_tiny_components_are_installed(model_root):
    assert installed_capabilities(model_root) == list(components.COMPONENTS)


def test_capabilities_follow_the_files(model_root, tmp_path):
    assert installed_capabilities(tmp_path) == []
    source = model_root / "diffusion"
    for name in ("upscaler", "face_swapper"):
        shutil.copytree(source / name, tmp_path / "diffusion" / name)
    assert installed_capabilities(tmp_path) == ["upscaler", "face_swapper"]
    assert HANDLERS["face_swap"].capabilities(tmp_path) == ["face_swapper"]
    (tmp_path / "diffusion" / "face_swapper" / "arcface.onnx").unlink()
    assert installed_capabilities(tmp_path) == ["upscaler"]
    assert HANDLERS["upscale"].capabilities(tmp_path) == ["upscaler"]
    assert HANDLERS["face_swap"].capabilities(tmp_path) == []
    with pytest.raises(FailedPrecondition) as caught:
        components.require(tmp_path, "face_swapper", needed_by="the face_swap pass")
    assert str(tmp_path / "diffusion" / "face_swapper" / "arcface.onnx") in str(caught.value)


def test_the_upscaler_and_the_restorer_are_one_weights_file_each(model_root, tmp_path):
    for name in ("upscaler", "face_restorer"):
        shutil.copytree(model_root / "diffusion" / name, tmp_path / "diffusion" / name)
    assert installed_capabilities(tmp_path) == ["upscaler", "face_restorer"]
    [weights] = (tmp_path / "diffusion" / "face_restorer").iterdir()
    shutil.copy(weights, weights.with_name("second.safetensors"))
    assert installed_capabilities(tmp_path) == ["upscaler"]
    with pytest.raises(FailedPrecondition, match="holds 2 weights files"):
        components.require(tmp_path, "face_restorer", needed_by="the face_correct pass")


def test_a_diffusers_upscaler_directory_counts_as_installed(tmp_path):
    directory = tmp_path / "diffusion" / "upscaler"
    directory.mkdir(parents=True)
    (directory / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    assert installed_capabilities(tmp_path) == ["upscaler"]


def test_cache_parts_change_with_the_component_weights(model_root, tmp_path):
    from multipass_dev.tiny_models import image_nets
    from multipass_diffusion.passes.upscale import UpscalePass

    directory = tmp_path / "diffusion" / "upscaler"
    shutil.copytree(model_root / "diffusion" / "upscaler", directory)
    handler = UpscalePass()
    before = handler.cache_parts(spec("upscale"), tmp_path)
    [weights] = directory.iterdir()
    image_nets.save_weights(image_nets.esrgan_state(features=16), weights, wrapper="params_ema")
    assert handler.cache_parts(spec("upscale"), tmp_path) != before
    assert before[0].startswith("multipass-finishing-")
