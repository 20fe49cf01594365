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
from multipass_diffusion.engine import file_sha256
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
    from multipass.tiny_models.diffusion import write_random_lora

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
