"""LoRA and checkpoint tunes: activation changes the model, deactivation restores it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, scene, spec
from safetensors.torch import save_file

from multipass.errors import InvalidInput
from multipass.images import encode_png
from multipass.v1 import common_pb2, prompt_pb2
from multipass_diffusion import metrics
from multipass_diffusion.adapters import AdapterRequest
from multipass_diffusion.models import file_sha256
from multipass_diffusion.passes.context import PassInputs


def request(path: Path, tune_id: str, weight: float = 1.0) -> AdapterRequest:
    return AdapterRequest(tune_id, path, file_sha256(path), weight)


def unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    channels = unet.config.in_channels
    sample = torch.randn(1, channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, 500, context).sample


def text_output(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73]))[0]


def tuned(spec_fields: dict, tunes: dict[str, Path], weights: dict[str, float] | None = None):
    weights = weights or {}
    loras = [
        prompt_pb2.LoraRef(tune_id=tune_id, weight=weights.get(tune_id, 1.0), kind="lora")
        for tune_id in tunes
    ]
    files = {
        tune_id: common_pb2.ObjectRef(
            bucket="multipass-tunes", key=f"tunes/t/{tune_id}/{p.name}", sha256=file_sha256(p)
        )
        for tune_id, p in tunes.items()
    }
    return spec(**spec_fields, loras=loras, tune_files=files), {tune_id: p for tune_id, p in tunes.items()}


@pytest.fixture
def sd15(engine):
    runtime = engine.runtime(SD15_MODEL)
    yield runtime
    runtime.adapters.deactivate()


def test_activation_changes_and_deactivation_restores_unet_and_text_encoder(sd15, lora_dir):
    components = sd15.base
    before_unet = unet_output(components.pipe.unet)
    before_inpaint = unet_output(components.inpaint_unet)
    before_text = text_output(components.pipe.text_encoder)
    sd15.adapters.activate([request(lora_dir / "sd15-a.safetensors", "1")])
    assert not torch.allclose(unet_output(components.pipe.unet), before_unet)
    assert not torch.allclose(unet_output(components.inpaint_unet), before_inpaint)
    assert not torch.allclose(text_output(components.pipe.text_encoder), before_text)
    sd15.adapters.deactivate()
    assert torch.equal(unet_output(components.pipe.unet), before_unet)
    assert torch.equal(unet_output(components.inpaint_unet), before_inpaint)
    assert torch.equal(text_output(components.pipe.text_encoder), before_text)


def test_weights_and_several_adapters(sd15, lora_dir):
    unet = sd15.base.pipe.unet
    a = request(lora_dir / "sd15-a.safetensors", "1")
    sd15.adapters.activate([a])
    full = unet_output(unet)
    sd15.adapters.activate([request(a.path, "1", 0.5)])
    half = unet_output(unet)
    sd15.adapters.activate([a, request(lora_dir / "sd15-b.safetensors", "2")])
    both = unet_output(unet)
    assert not torch.allclose(full, half) and not torch.allclose(full, both)
    assert sd15.adapters.active == (
        a.adapter_name,
        request(lora_dir / "sd15-b.safetensors", "2").adapter_name,
    )


def test_kohya_and_unet_only_loras_load(sd15, lora_dir):
    before = unet_output(sd15.base.pipe.unet)
    for name, tune in (("sd15-b.safetensors", "2"), ("sd15-unet-only.safetensors", "3")):
        sd15.adapters.activate([request(lora_dir / name, tune)])
        assert not torch.allclose(unet_output(sd15.base.pipe.unet), before), name


def test_lru_evicts_within_the_memory_budget(sd15, model_root, tmp_path):
    from multipass_dev.tiny_models.diffusion import write_random_lora

    cache = sd15.adapters
    budget = cache.budget_bytes
    model = model_root / "diffusion" / SD15_MODEL
    d = request(write_random_lora(model, tmp_path / "d.safetensors", seed=21), "21")
    e = request(write_random_lora(model, tmp_path / "e.safetensors", seed=22), "22")
    try:
        cache.activate([d])
        cache.budget_bytes = cache._resident[d.adapter_name]  # room for exactly one adapter of this size
        cache.activate([e])
        assert cache.resident == [e.adapter_name]
        assert d.adapter_name not in sd15.base.pipe.get_list_adapters()["unet"]
        hits, misses = metrics.LORA_CACHE_HITS._value.get(), metrics.LORA_CACHE_MISSES._value.get()
        cache.activate([e])
        cache.activate([d])
        assert (metrics.LORA_CACHE_HITS._value.get(), metrics.LORA_CACHE_MISSES._value.get()) == (
            hits + 1,
            misses + 1,
        )
        assert cache.resident == [d.adapter_name]
    finally:
        cache.budget_bytes = budget


def test_tuned_pass_differs_and_the_base_pass_is_the_unmodified_model(engine, lora_dir):
    base_before = engine.run(spec(seed=3))
    tuned_spec, paths = tuned({"seed": 3}, {"101": lora_dir / "sd15-a.safetensors"})
    with_lora = engine.run(tuned_spec, PassInputs(tune_paths=paths))
    base_after = engine.run(spec(seed=3))
    assert with_lora.image.tobytes() != base_before.image.tobytes()
    assert encode_png(base_after.image) == encode_png(base_before.image)
    assert with_lora.metadata["adapters"].startswith("t101_")


def test_person_pass_with_a_lora(engine, lora_dir):
    source = scene(96, 96)
    mask = box_mask(source.size, (30, 30, 60, 80))
    plain = engine.run(spec(kind="person", width=0, height=0), PassInputs(image=source, mask=mask))
    tuned_spec, paths = tuned(
        {"kind": "person", "width": 0, "height": 0}, {"7": lora_dir / "sd15-b.safetensors"}
    )
    person = engine.run(tuned_spec, PassInputs(image=source, mask=mask, tune_paths=paths))
    assert person.image.tobytes() != plain.image.tobytes()


def test_a_tune_of_another_family_is_refused(engine, lora_dir):
    sdxl_spec, paths = tuned({}, {"55": lora_dir / "sdxl-a.safetensors"})
    with pytest.raises(InvalidInput, match=r"<lora:55:1>.*SDXL tune; model sd15-tiny"):
        engine.run(sdxl_spec, PassInputs(tune_paths=paths))
    sd15_spec, paths = tuned({"model": SDXL_MODEL}, {"56": lora_dir / "sd15-a.safetensors"})
    with pytest.raises(InvalidInput, match=r"<lora:56:1>.*another model family"):
        engine.run(sd15_spec, PassInputs(tune_paths=paths))


def test_sdxl_lora_changes_the_sdxl_output(engine, lora_dir):
    base = engine.run(spec(SDXL_MODEL))
    tuned_spec, paths = tuned({"model": SDXL_MODEL}, {"57": lora_dir / "sdxl-a.safetensors"})
    assert engine.run(tuned_spec, PassInputs(tune_paths=paths)).image.tobytes() != base.image.tobytes()
    assert engine.run(spec(SDXL_MODEL)).image.tobytes() == base.image.tobytes()


def test_a_lora_tag_without_a_file_is_invalid(engine):
    bad = spec(loras=[prompt_pb2.LoraRef(tune_id="9", weight=1.0, kind="lora")])
    with pytest.raises(InvalidInput, match=r"<lora:9:1>: has no file"):
        engine.run(bad)


def test_a_file_that_is_no_tune_is_invalid(engine, tmp_path):
    junk = tmp_path / "junk.safetensors"
    save_file({"vae.weight": torch.zeros(2)}, str(junk))
    bad, paths = tuned({}, {"8": junk})
    with pytest.raises(InvalidInput, match="neither a LoRA"):
        engine.run(bad, PassInputs(tune_paths=paths))


def test_checkpoint_tune_runs_on_a_second_component_set(engine, tmp_path):
    from safetensors.torch import load_file

    runtime = engine.runtime(SD15_MODEL)
    model = runtime.entry.path
    generator = torch.Generator().manual_seed(5)
    unet = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    state = {f"unet.{k}": v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in unet.items()}
    state.update(
        {
            f"text_encoder.{k}": v
            for k, v in load_file(str(model / "text_encoder" / "model.safetensors")).items()
        }
    )
    path = tmp_path / "checkpoint.safetensors"
    save_file(state, str(path))
    base = engine.run(spec(seed=9))
    checkpoint_spec, paths = tuned({"seed": 9}, {"300": path})
    first = engine.run(checkpoint_spec, PassInputs(tune_paths=paths))
    assert first.image.tobytes() != base.image.tobytes()
    components, _ = runtime.components_for("300", path, file_sha256(path), "diffusers")
    assert components.pipe.unet is not runtime.base.pipe.unet
    assert components.pipe.vae is runtime.base.pipe.vae
    assert runtime.components_for("300", path, file_sha256(path), "diffusers")[0] is components
    assert engine.run(checkpoint_spec, PassInputs(tune_paths=paths)).image.tobytes() == first.image.tobytes()
    assert engine.run(spec(seed=9)).image.tobytes() == base.image.tobytes()


def test_checkpoint_with_a_lora_leaves_the_shared_text_encoder_clean(engine, tmp_path, lora_dir):
    from safetensors.torch import load_file

    runtime = engine.runtime(SD15_MODEL)
    unet = load_file(str(runtime.entry.path / "unet" / "diffusion_pytorch_model.safetensors"))
    path = tmp_path / "unet-only.safetensors"
    save_file({f"unet.{k}": v * 1.01 for k, v in unet.items()}, str(path))  # no text encoder: it is shared
    base = engine.run(spec(seed=4))
    both, paths = tuned({"seed": 4}, {"301": path, "12": lora_dir / "sd15-a.safetensors"})
    components, _ = runtime.components_for("301", path, file_sha256(path), "diffusers")
    assert components.pipe.text_encoder is runtime.base.pipe.text_encoder
    assert engine.run(both, PassInputs(tune_paths=paths)).image.tobytes() != base.image.tobytes()
    assert engine.run(spec(seed=4)).image.tobytes() == base.image.tobytes()


# -- the switch shortcut: PEFT is called only when a module's LoRA state changes ----------------------


@pytest.fixture
def peft_calls(monkeypatch):
    """Counts the PEFT-walking calls the adapter cache makes, by method name (pipelines and models)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders import lora_base

    counts: dict[str, int] = {}

    def counting(owner, name):
        original = getattr(owner, name)

        key = f"{owner.__name__}.{name}"

        def wrapper(*args, **kwargs):
            counts[key] = counts.get(key, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("enable_lora", "set_adapters"):
        counting(StableDiffusionPipeline, name)
        counting(UNet2DConditionModel, name)
    counting(UNet2DConditionModel, "disable_lora")
    counting(lora_base, "disable_lora_for_text_encoder")
    return counts


def test_repeating_the_active_adapters_calls_peft_once_and_keeps_the_output(sd15, lora_dir, peft_calls):
    a = request(lora_dir / "sd15-a.safetensors", "1", 0.8)
    unet = sd15.base.pipe.unet
    sd15.adapters.activate([a])
    first = unet_output(unet), unet_output(sd15.base.inpaint_unet), text_output(sd15.base.pipe.text_encoder)
    calls_after_first = dict(peft_calls)
    assert calls_after_first.get("StableDiffusionPipeline.set_adapters", 0) >= 1
    for _ in range(3):
        sd15.adapters.activate([a])
    assert peft_calls == calls_after_first
    again = unet_output(unet), unet_output(sd15.base.inpaint_unet), text_output(sd15.base.pipe.text_encoder)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    # Another weight is another active set: it goes to PEFT and changes the output.
    sd15.adapters.activate([request(a.path, "1", 0.4)])
    assert (
        peft_calls["StableDiffusionPipeline.set_adapters"]
        == calls_after_first["StableDiffusionPipeline.set_adapters"] + 1
    )
    assert not torch.equal(unet_output(unet), first[0])


def test_switching_a_b_a_gives_the_pixels_of_a_fresh_activation(engine, sd15, lora_dir, peft_calls):
    a = request(lora_dir / "sd15-a.safetensors", "1")
    b = request(lora_dir / "sd15-b.safetensors", "2")
    sd15.adapters.activate([a])
    fresh_a = unet_output(sd15.base.pipe.unet), text_output(sd15.base.pipe.text_encoder)
    sd15.adapters.activate([b])
    only_b = unet_output(sd15.base.pipe.unet)
    sd15.adapters.activate([a])
    back_a = unet_output(sd15.base.pipe.unet), text_output(sd15.base.pipe.text_encoder)
    assert not torch.equal(only_b, fresh_a[0])
    assert torch.equal(back_a[0], fresh_a[0]) and torch.equal(back_a[1], fresh_a[1])
    # Through whole passes: tuned A, tuned B, base, tuned A again give A's pixels every time.
    spec_a, paths_a = tuned({"seed": 6}, {"1": a.path})
    spec_b, paths_b = tuned({"seed": 6}, {"2": b.path})
    first = engine.run(spec_a, PassInputs(tune_paths=paths_a)).image.tobytes()
    assert engine.run(spec_b, PassInputs(tune_paths=paths_b)).image.tobytes() != first
    engine.run(spec(seed=6))
    assert engine.run(spec_a, PassInputs(tune_paths=paths_a)).image.tobytes() == first


def test_deactivation_is_skipped_when_already_off_and_reactivation_enables_again(sd15, lora_dir, peft_calls):
    a = request(lora_dir / "sd15-a.safetensors", "1")
    before = unet_output(sd15.base.pipe.unet)
    sd15.adapters.activate([a])
    tuned_output = unet_output(sd15.base.pipe.unet)
    sd15.adapters.deactivate()
    disables = peft_calls["UNet2DConditionModel.disable_lora"]
    sd15.adapters.deactivate()
    sd15.adapters.deactivate()
    assert peft_calls["UNet2DConditionModel.disable_lora"] == disables
    assert torch.equal(unet_output(sd15.base.pipe.unet), before)
    # Same adapters as before the deactivation: only enable_lora is needed, and it must happen.
    enables = peft_calls["StableDiffusionPipeline.enable_lora"]
    sets = peft_calls.get("StableDiffusionPipeline.set_adapters", 0)
    sd15.adapters.activate([a])
    assert peft_calls["StableDiffusionPipeline.enable_lora"] == enables + 1
    assert peft_calls.get("StableDiffusionPipeline.set_adapters", 0) == sets
    assert torch.equal(unet_output(sd15.base.pipe.unet), tuned_output)


def test_a_checkpoint_set_changing_the_shared_text_encoder_is_seen_by_the_base_set(
    engine, tmp_path, lora_dir
):
    from safetensors.torch import load_file

    runtime = engine.runtime(SD15_MODEL)
    unet = load_file(str(runtime.entry.path / "unet" / "diffusion_pytorch_model.safetensors"))
    path = tmp_path / "unet-only.safetensors"
    save_file({f"unet.{k}": v * 0.99 for k, v in unet.items()}, str(path))
    components, checkpoint_cache = runtime.components_for("302", path, file_sha256(path), "diffusers")
    encoder = runtime.base.pipe.text_encoder
    assert components.pipe.text_encoder is encoder
    a = request(lora_dir / "sd15-a.safetensors", "1")
    b = request(lora_dir / "sd15-b.safetensors", "2")
    try:
        runtime.adapters.activate([a])
        with_a = text_output(encoder)
        runtime.adapters.deactivate()
        checkpoint_cache.activate([b])  # B's text-encoder layers on the shared encoder
        assert not torch.equal(text_output(encoder), with_a)
        checkpoint_cache.deactivate()
        runtime.adapters.activate([a])  # the base set's memory says A; the encoder must be set again
        assert torch.equal(text_output(encoder), with_a)
    finally:
        checkpoint_cache.deactivate()
        runtime.adapters.deactivate()


# -- kohya/A1111 alphas: every targeted module runs at alpha/rank -----------------------------------


def write_kohya_lora(model_dir: Path, path: Path, *, seed: int, rank: int, alpha: float) -> Path:
    """A random kohya-format LoRA (``lora_unet_*``/``lora_te*`` keys) whose modules all have ``alpha``."""
    from safetensors.torch import load_file

    from multipass_dev.tiny_models.diffusion import write_random_lora

    write_random_lora(model_dir, path, seed=seed, rank=rank, kohya=True, alpha=alpha)
    alphas = {float(v) for k, v in load_file(str(path)).items() if k.endswith(".alpha")}
    assert alphas == {alpha}
    return path


def lora_scalings(module, adapter: str) -> set[float]:
    """The PEFT scaling (alpha/rank before any pass weight) of every LoRA layer of ``adapter`` in ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        float(layer.scaling[adapter])
        for _, layer in module.named_modules()
        if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "scaling", {})
    }


@pytest.mark.parametrize("model", [SD15_MODEL, SDXL_MODEL])
def test_kohya_alpha_over_rank_scales_every_targeted_module(engine, model, model_root, tmp_path):
    runtime = engine.runtime(model)
    components = runtime.base
    path = write_kohya_lora(
        model_root / "diffusion" / model, tmp_path / "kohya.safetensors", seed=31, rank=3, alpha=6.0
    )
    lora = request(path, "31")
    name = runtime.adapters.namespace + lora.adapter_name
    modules = {"unet": components.pipe.unet, "inpaint_unet": components.inpaint_unet}
    modules.update({f"text_encoder_{i}": e for i, e in enumerate(components.text_encoders)})
    try:
        runtime.adapters.activate([lora])
        scalings = {label: lora_scalings(m, name) for label, m in modules.items() if m is not None}
    finally:
        runtime.adapters.deactivate()
    assert len(scalings) >= 2 + (model == SDXL_MODEL)
    assert scalings == dict.fromkeys(scalings, {2.0})  # alpha 6 / rank 3, on every module


def test_kohya_alpha_changes_outputs_as_the_pass_weight_does(sd15, model_root, tmp_path):
    """alpha 6 at weight 1 is alpha 3 (scale 1) at weight 2, on the UNet, the inpainting UNet and the text encoder."""
    model = model_root / "diffusion" / SD15_MODEL
    doubled = request(write_kohya_lora(model, tmp_path / "a6.safetensors", seed=32, rank=3, alpha=6.0), "a6")
    plain = request(
        write_kohya_lora(model, tmp_path / "a3.safetensors", seed=32, rank=3, alpha=3.0), "a3", 2.0
    )
    components = sd15.base

    def outputs():
        return (
            unet_output(components.pipe.unet),
            unet_output(components.inpaint_unet),
            text_output(components.pipe.text_encoder),
        )

    before = outputs()
    sd15.adapters.activate([doubled])
    with_alpha = outputs()
    sd15.adapters.activate([plain])
    with_weight = outputs()
    sd15.adapters.activate([request(plain.path, "a3", 1.0)])
    at_scale_one = outputs()
    for label, a, b, one, base in zip(
        ("unet", "inpaint_unet", "text_encoder"), with_alpha, with_weight, at_scale_one, before, strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), label
        assert not torch.allclose(a, one, atol=1e-4) and not torch.allclose(one, base), label


# -- diffusers-format files with adapter metadata: the saved LoraConfig's lora_alpha / r ---------------


def write_metadata_lora(model_dir: Path, path: Path, *, seed: int, alpha: float, **kwargs) -> Path:
    """A random diffusers-format LoRA of rank 3 whose header carries each component's LoraConfig."""
    from multipass_dev.tiny_models.diffusion import write_random_lora

    return write_random_lora(model_dir, path, seed=seed, rank=3, alpha=alpha, metadata=True, **kwargs)


def lora_scalings_by_module(module, adapter: str) -> dict[str, float]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: float(layer.scaling[adapter])
        for name, layer in module.named_modules()
        if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "scaling", {})
    }


@pytest.mark.parametrize("model", [SD15_MODEL, SDXL_MODEL])
def test_adapter_metadata_alpha_over_rank_scales_every_targeted_module(engine, model, model_root, tmp_path):
    runtime = engine.runtime(model)
    components = runtime.base
    path = write_metadata_lora(
        model_root / "diffusion" / model, tmp_path / "meta.safetensors", seed=41, alpha=6.0
    )
    lora = request(path, "41")
    name = runtime.adapters.namespace + lora.adapter_name
    modules = {"unet": components.pipe.unet, "inpaint_unet": components.inpaint_unet}
    modules.update({f"text_encoder_{i}": e for i, e in enumerate(components.text_encoders)})
    try:
        runtime.adapters.activate([lora])
        scalings = {label: lora_scalings(m, name) for label, m in modules.items() if m is not None}
    finally:
        runtime.adapters.deactivate()
    assert len(scalings) >= 2 + (model == SDXL_MODEL)
    assert scalings == dict.fromkeys(scalings, {2.0})  # lora_alpha 6 / r 3, on every module


def test_adapter_metadata_alpha_pattern_scales_the_matching_modules(sd15, model_root, tmp_path):
    path = write_metadata_lora(
        model_root / "diffusion" / SD15_MODEL,
        tmp_path / "pattern.safetensors",
        seed=42,
        alpha=6.0,
        alpha_pattern={"to_out.0": 3.0},
    )
    lora = request(path, "42")
    name = sd15.adapters.namespace + lora.adapter_name
    try:
        sd15.adapters.activate([lora])
        by_unet = {
            label: lora_scalings_by_module(unet, name)
            for label, unet in (("unet", sd15.base.pipe.unet), ("inpaint_unet", sd15.base.inpaint_unet))
        }
    finally:
        sd15.adapters.deactivate()
    for label, scalings in by_unet.items():
        out = {m: s for m, s in scalings.items() if m.endswith("to_out.0")}
        rest = {m: s for m, s in scalings.items() if not m.endswith("to_out.0")}
        assert out and rest, label
        assert set(out.values()) == {1.0} and set(rest.values()) == {2.0}, label  # 3/3 and 6/3


def test_adapter_metadata_alpha_changes_outputs_as_the_pass_weight_does(sd15, model_root, tmp_path):
    """lora_alpha 6 / r 3 at weight 1 is the same weights without metadata (scale 1) at weight 2."""
    from multipass_dev.tiny_models.diffusion import write_random_lora

    model = model_root / "diffusion" / SD15_MODEL
    doubled = request(write_metadata_lora(model, tmp_path / "a6.safetensors", seed=43, alpha=6.0), "a6")
    plain = request(write_random_lora(model, tmp_path / "a3.safetensors", seed=43, rank=3), "a3", 2.0)
    components = sd15.base

    def outputs():
        return (
            unet_output(components.pipe.unet),
            unet_output(components.inpaint_unet),
            text_output(components.pipe.text_encoder),
        )

    before = outputs()
    sd15.adapters.activate([doubled])
    with_alpha = outputs()
    sd15.adapters.activate([plain])
    with_weight = outputs()
    sd15.adapters.activate([request(plain.path, "a3", 1.0)])
    at_scale_one = outputs()
    for label, a, b, one, base in zip(
        ("unet", "inpaint_unet", "text_encoder"), with_alpha, with_weight, at_scale_one, before, strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), label
        assert not torch.allclose(a, one, atol=1e-4) and not torch.allclose(one, base), label


# -- ComfyUI-format files: the original (LDM) module paths under diffusion_model. / text_encoders. ---------


def comfy_and_kohya_loras(tmp_path: Path, *, peft_names: bool) -> tuple[Path, Path]:
    """The same random LoRA (a cross-attention key projection of the UNet's second down block and the first
    attention output projection of the text encoder, rank 2, alpha 4) as a ComfyUI file and as a kohya file of LDM names."""
    generator = torch.Generator().manual_seed(77)
    weights = {
        ("input_blocks.3.1.transformer_blocks.0.attn2.to_k", "unet"): (torch.randn(2, 32, generator=generator), torch.randn(64, 2, generator=generator)),
        ("text_model.encoder.layers.0.self_attn.out_proj", "te"): (torch.randn(2, 32, generator=generator), torch.randn(32, 2, generator=generator)),
    }  # fmt: skip
    down, up = ("lora_A", "lora_B") if peft_names else ("lora_down", "lora_up")
    comfy, kohya = {}, {}
    for (path, part), (a, b) in weights.items():
        comfy_module = (
            f"diffusion_model.{path}" if part == "unet" else f"text_encoders.clip_l.transformer.{path}"
        )
        kohya_module = ("lora_unet_" if part == "unet" else "lora_te_") + path.replace(".", "_")
        comfy |= {f"{comfy_module}.{down}.weight": a, f"{comfy_module}.{up}.weight": b}
        comfy[f"{comfy_module}.alpha"] = torch.tensor(4.0)
        kohya |= {f"{kohya_module}.lora_down.weight": a, f"{kohya_module}.lora_up.weight": b}
        kohya[f"{kohya_module}.alpha"] = torch.tensor(4.0)
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    return tmp_path / "comfy.safetensors", tmp_path / "kohya.safetensors"


@pytest.mark.parametrize("peft_names", [False, True])
def test_a_comfyui_lora_acts_as_the_same_lora_in_kohya_names(sd15, tmp_path, peft_names):
    comfy, kohya = comfy_and_kohya_loras(tmp_path, peft_names=peft_names)
    components = sd15.base
    before = (unet_output(components.pipe.unet), text_output(components.pipe.text_encoder))
    sd15.adapters.activate([request(kohya, "k")])
    as_kohya = (unet_output(components.pipe.unet), text_output(components.pipe.text_encoder))
    sd15.adapters.activate([request(comfy, "c")])
    as_comfy = (unet_output(components.pipe.unet), text_output(components.pipe.text_encoder))
    for label, base, k, c in zip(("unet", "text_encoder"), before, as_kohya, as_comfy, strict=True):
        assert not torch.allclose(k, base), label
        assert torch.equal(c, k), label


@pytest.mark.parametrize(
    "extra",
    [
        {"diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_v.lora_down.weight": (2, 32)},
        {"text_encoder_typo.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (2, 32)},
    ],
)
def test_tensors_no_part_of_the_model_takes_are_refused_not_dropped(sd15, tmp_path, extra):
    generator = torch.Generator().manual_seed(5)
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    tensors = {
        f"{module}.lora_A.weight": torch.randn(2, 32, generator=generator),
        f"{module}.lora_B.weight": torch.randn(64, 2, generator=generator),
    }
    tensors |= {name: torch.randn(*shape, generator=generator) for name, shape in extra.items()}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(InvalidInput) as caught:
        sd15.adapters.activate([request(path, "m")])
    (violation,) = caught.value.violations
    assert "fit no part of the model (unet, text_encoder)" in violation.description
    assert next(iter(extra)) in violation.description
