"""Compiled UNet with LoRA hot-swap: switching LoRAs never recompiles, and the images match the plain engine.

The compiled engine uses a counting dynamo backend (it runs the traced graph eagerly and counts each graph
it is handed), so a recompilation shows up as a higher count, and the images can be compared with the
non-compiled engine's. Tolerance: at most 2 of 255 per channel (the folded LoRA scale and the zero-padded
rank change float rounding, nothing else).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from diffusion_testkit import SD15_MODEL, pixels, spec

from multipass.errors import InvalidInput
from multipass_dev.tiny_models.diffusion import write_random_lora
from multipass_diffusion.models import file_sha256
from multipass_diffusion.passes.context import PassInputs

BACKEND = "multipass_counting_test"
COMPILED_GRAPHS: list[int] = []
#: Largest difference allowed between compiled and plain images, in 0..255 levels.
PIXEL_TOLERANCE = 2


def _register_counting_backend() -> None:
    from torch._dynamo import list_backends, register_backend

    if BACKEND in list_backends(exclude_tags=()):
        return

    def counting(gm, example_inputs):
        COMPILED_GRAPHS.append(len(list(gm.graph.nodes)))
        return gm.forward

    register_backend(counting, name=BACKEND)


@pytest.fixture(scope="module")
def loras(model_root: Path, tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("hotswap-loras")
    sd15 = model_root / "diffusion" / SD15_MODEL
    return {
        "rank2": write_random_lora(sd15, directory / "rank2.safetensors", seed=11, rank=2),
        "rank4": write_random_lora(sd15, directory / "rank4.safetensors", seed=12, rank=4, kohya=True),
    }


@pytest.fixture(scope="module")
def compiled(settings):
    from multipass_diffusion.engine import Engine

    _register_counting_backend()
    engine = Engine(
        dataclasses.replace(
            settings, models=(SD15_MODEL,), compile=True, compile_backend=BACKEND, compile_lora_rank=8
        )
    )
    engine.load()
    return engine


def _tuned(tune_id: str, path: Path, weight: float = 1.0):
    from multipass.v1 import common_pb2, prompt_pb2

    ref = common_pb2.ObjectRef(
        bucket="multipass-tunes", key=f"tunes/t/{tune_id}/{path.name}", sha256=file_sha256(path)
    )
    pass_spec = spec(
        loras=[prompt_pb2.LoraRef(tune_id=tune_id, weight=weight, kind="lora")],
        tune_files={tune_id: ref},
        steps=2,
    )
    return pass_spec, PassInputs(tune_paths={tune_id: path})


def _image(engine, tune_id: str, path: Path, weight: float = 1.0) -> np.ndarray:
    pass_spec, inputs = _tuned(tune_id, path, weight)
    return pixels(engine.run(pass_spec, inputs).image)


def test_lora_switches_do_not_recompile_and_match_the_plain_engine(compiled, engine, loras):
    plain = {
        "rank2": _image(engine, "rank2", loras["rank2"]),
        "rank4": _image(engine, "rank4", loras["rank4"], 0.7),
    }
    engine.runtime(SD15_MODEL).adapters.deactivate()

    first = _image(compiled, "rank2", loras["rank2"])
    graphs = len(COMPILED_GRAPHS)
    assert graphs > 0, "the compiled UNet never reached the backend"
    second = _image(compiled, "rank4", loras["rank4"], 0.7)
    back = _image(compiled, "rank2", loras["rank2"])

    assert len(COMPILED_GRAPHS) == graphs, "switching LoRAs recompiled the UNet"
    cache = compiled.runtime(SD15_MODEL).adapters
    assert cache.swaps == 3
    assert np.abs(first - plain["rank2"]).max() <= PIXEL_TOLERANCE
    assert np.abs(second - plain["rank4"]).max() <= PIXEL_TOLERANCE
    assert np.array_equal(back, first)
    assert np.abs(first - second).max() > 10, "the two LoRAs should give different images"


def test_base_pass_after_a_lora_matches_the_plain_engine(compiled, engine, loras):
    _image(compiled, "rank2", loras["rank2"])
    compiled_output, plain_output = compiled.run(spec(steps=2)), engine.run(spec(steps=2))
    base_compiled, base_plain = pixels(compiled_output.image), pixels(plain_output.image)
    assert np.abs(base_compiled - base_plain).max() <= PIXEL_TOLERANCE
    assert compiled_output.spec_hash != plain_output.spec_hash, "compiled outputs share cache keys"
    graphs = len(COMPILED_GRAPHS)
    _image(compiled, "rank4", loras["rank4"])
    pixels(compiled.run(spec(steps=2)).image)
    assert len(COMPILED_GRAPHS) == graphs, "going back and forth between base and LoRA passes recompiled"


def test_loras_above_the_slot_rank_are_refused(compiled, model_root, tmp_path):
    wide = write_random_lora(
        model_root / "diffusion" / SD15_MODEL, tmp_path / "wide.safetensors", seed=13, rank=12
    )
    with pytest.raises(InvalidInput, match="rank 12 .* slot holds rank 8"):
        _image(compiled, "wide", wide)


def test_two_loras_in_one_pass_fill_one_slot_and_match_the_plain_engine(compiled, engine, loras):
    from multipass.v1 import common_pb2, prompt_pb2

    refs, paths = {}, {}
    for tune_id in ("rank2", "rank4"):
        path = loras[tune_id]
        paths[tune_id] = path
        refs[tune_id] = common_pb2.ObjectRef(
            bucket="multipass-tunes", key=f"tunes/t/{tune_id}/{path.name}", sha256=file_sha256(path)
        )
    both = spec(
        loras=[
            prompt_pb2.LoraRef(tune_id="rank2", weight=0.5, kind="lora"),
            prompt_pb2.LoraRef(tune_id="rank4", weight=0.8, kind="lora"),
        ],
        tune_files=refs,
        steps=2,
    )
    plain = pixels(engine.run(both, PassInputs(tune_paths=paths)).image)
    engine.runtime(SD15_MODEL).adapters.deactivate()
    together = pixels(compiled.run(both, PassInputs(tune_paths=paths)).image)
    assert np.abs(together - plain).max() <= PIXEL_TOLERANCE


def test_loras_outside_the_slot_modules_are_refused(compiled, loras, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    unet = compiled.runtime(SD15_MODEL).base.pipe.unet
    name, module = next((n, m) for n, m in unet.named_modules() if n.endswith("resnets.0.time_emb_proj"))
    state = load_file(str(loras["rank2"]))
    state[f"unet.{name}.lora_A.weight"] = torch.ones(2, module.in_features)
    state[f"unet.{name}.lora_B.weight"] = torch.ones(module.out_features, 2)
    path = tmp_path / "resnet.safetensors"
    save_file(state, str(path))
    with pytest.raises(InvalidInput, match=f"outside the compiled hot-swap slot .*{name}"):
        _image(compiled, "resnet", path)


def test_compile_settings_are_read_from_the_environment_and_off_by_default(model_root):
    from multipass.config import ConfigError
    from multipass_diffusion.engine import compile_options
    from multipass_diffusion.runtime import CompileOptions
    from multipass_diffusion.settings import DiffusionSettings

    base = {"MULTIPASS_MODEL_DIR": str(model_root)}
    assert compile_options(DiffusionSettings.from_env(base)) is None
    on = DiffusionSettings.from_env(
        {
            **base,
            "MULTIPASS_DIFFUSION_COMPILE": "1",
            "MULTIPASS_DIFFUSION_COMPILE_MODE": "max-autotune-no-cudagraphs",
            "MULTIPASS_DIFFUSION_COMPILE_LORA_RANK": "32",
        }
    )
    assert compile_options(on) == CompileOptions("max-autotune-no-cudagraphs", "inductor", 32)
    with pytest.raises(ConfigError, match="MULTIPASS_DIFFUSION_COMPILE_MODE"):
        DiffusionSettings.from_env({**base, "MULTIPASS_DIFFUSION_COMPILE_MODE": "fastest"})


def test_folded_loras_stay_within_the_adapter_budget(compiled, loras, model_root, tmp_path):
    third = write_random_lora(
        model_root / "diffusion" / SD15_MODEL, tmp_path / "rank3.safetensors", seed=14, rank=3
    )
    cache = compiled.runtime(SD15_MODEL).adapters
    first = _image(compiled, "rank2", loras["rank2"])
    budget = cache.budget_bytes
    try:
        cache.budget_bytes = 1  # every load evicts the LoRAs the pass does not need
        _image(compiled, "rank3", third)
        assert [name[:6] for name in cache.resident] == ["trank3"]
        assert np.array_equal(_image(compiled, "rank2", loras["rank2"]), first)  # reloaded, same image
        assert [name[:6] for name in cache.resident] == ["trank2"]
    finally:
        cache.budget_bytes = budget
        cache.deactivate()


def test_a_lora_with_ranks_differing_by_module_matches_the_plain_engine(
    compiled, engine, model_root, tmp_path
):
    from safetensors.torch import load_file, save_file

    source = write_random_lora(
        model_root / "diffusion" / SD15_MODEL, tmp_path / "rank4.safetensors", seed=15, rank=4
    )
    state = load_file(str(source))  # diffusers layout, no alphas: scale 1 per module
    down_keys = sorted(k for k in state if k.startswith("unet.") and k.endswith(".lora_A.weight"))
    for key in down_keys[::2]:  # every other UNet module: rank 3 (a rank pattern in its config)
        stem = key.removesuffix(".lora_A.weight")
        state[key] = state[key][:3].contiguous()
        state[f"{stem}.lora_B.weight"] = state[f"{stem}.lora_B.weight"][:, :3].contiguous()
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    plain = _image(engine, "mixed", path)
    engine.runtime(SD15_MODEL).adapters.deactivate()
    assert np.abs(_image(compiled, "mixed", path) - plain).max() <= PIXEL_TOLERANCE


def test_person_passes_swap_the_inpainting_unet_slot_too(compiled, engine, loras):
    from diffusion_testkit import box_mask, scene

    assert compiled.runtime(SD15_MODEL).base.inpaint_unet is not None
    source = scene(96, 96)
    mask = box_mask(source.size, (30, 30, 60, 80))

    def person(engine_, tune_id: str) -> np.ndarray:
        pass_spec, inputs = _tuned(tune_id, loras[tune_id])
        pass_spec.kind, pass_spec.width, pass_spec.height = "person", 0, 0
        inputs.image, inputs.mask = source, mask
        return pixels(engine_.run(pass_spec, inputs).image)

    plain = {tune_id: person(engine, tune_id) for tune_id in ("rank2", "rank4")}
    engine.runtime(SD15_MODEL).adapters.deactivate()
    first = person(compiled, "rank2")
    graphs = len(COMPILED_GRAPHS)
    second = person(compiled, "rank4")
    assert len(COMPILED_GRAPHS) == graphs, "switching LoRAs between person passes recompiled"
    assert np.abs(first - plain["rank2"]).max() <= PIXEL_TOLERANCE
    assert np.abs(second - plain["rank4"]).max() <= PIXEL_TOLERANCE
    compiled.runtime(SD15_MODEL).adapters.deactivate()


def test_a_kohya_lora_with_alpha_other_than_rank_matches_the_plain_engine(
    compiled, engine, model_root, tmp_path
):
    """Both paths apply alpha/rank (here 6/3): the compiled slot folds it, the plain adapters are configured with it."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file, save_file

    path = write_random_lora(
        model_root / "diffusion" / SD15_MODEL, tmp_path / "kohya.safetensors", seed=16, rank=3, kohya=True
    )
    state = load_file(str(path))
    save_file({k: torch.tensor(6.0) if k.endswith(".alpha") else v for k, v in state.items()}, str(path))
    plain = _image(engine, "kohya", path)
    engine.runtime(SD15_MODEL).adapters.deactivate()
    tuned = _image(compiled, "kohya", path)
    runtime = compiled.runtime(SD15_MODEL)
    encoder = runtime.base.pipe.text_encoder
    name = runtime.adapters.active[0]
    scalings = {
        float(layer.scaling[name])
        for _, layer in encoder.named_modules()
        if isinstance(layer, BaseTunerLayer) and name in getattr(layer, "scaling", {})
    }
    runtime.adapters.deactivate()
    assert np.abs(tuned - plain).max() <= PIXEL_TOLERANCE
    assert scalings == {2.0}  # the text encoder's adapter: 6 / 3


def test_a_lora_with_adapter_metadata_matches_the_plain_engine(compiled, engine, model_root, tmp_path):
    """A diffusers-format file's saved LoraConfig (lora_alpha 6, r 3, to_out.0 at alpha 3) reaches the slot."""
    sd15 = model_root / "diffusion" / SD15_MODEL
    path = write_random_lora(
        sd15,
        tmp_path / "meta.safetensors",
        seed=17,
        rank=3,
        alpha=6.0,
        metadata=True,
        alpha_pattern={"to_out.0": 3.0},
    )
    scale_one = write_random_lora(sd15, tmp_path / "scale-one.safetensors", seed=17, rank=3)
    plain = _image(engine, "meta", path)
    plain_scale_one = _image(engine, "scale-one", scale_one)
    engine.runtime(SD15_MODEL).adapters.deactivate()
    tuned = _image(compiled, "meta", path)
    compiled.runtime(SD15_MODEL).adapters.deactivate()
    assert np.abs(plain - plain_scale_one).max() > 10, "the saved lora_alpha should change the image"
    assert np.abs(tuned - plain).max() <= PIXEL_TOLERANCE
