"""Tune files as trainers write them: kohya, diffusers/PEFT and LyCORIS LoCon load; LoHa, LoKr and DoRA are
refused, naming their format, at registration (the gateway) and at the worker alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, spec
from safetensors import safe_open

from multipass import tune_formats
from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, prompt_pb2
from multipass_dev.tiny_models.diffusion import write_random_lora
from multipass_dev.tiny_models.lycoris_files import write_lycoris
from multipass_diffusion import models
from multipass_diffusion.passes.context import PassInputs
from multipass_gateway.domain.tune_files import check_safetensors

#: algorithm -> (format name, the tensor-name marker a refusal names; "" when the format loads)
LYCORIS = {
    "locon": ("LyCORIS LoCon (kohya layout)", ""),
    "loha": ("LyCORIS LoHa", "hada_w1_a"),
    "lokr": ("LyCORIS LoKr", "lokr_w1"),
    "dora": ("DoRA", "dora_scale"),
}


@pytest.fixture(scope="module")
def tune_files(model_root, tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tune-formats")
    sd15 = model_root / "diffusion" / SD15_MODEL
    files = {
        name: write_lycoris(sd15, directory / f"{name}.safetensors", algorithm=name, seed=60 + index)
        for index, name in enumerate(LYCORIS)
    }
    files["kohya"] = write_random_lora(sd15, directory / "kohya.safetensors", seed=70, kohya=True)
    files["diffusers"] = write_random_lora(sd15, directory / "diffusers.safetensors", seed=71)
    files["sdxl-loha"] = write_lycoris(
        model_root / "diffusion" / SDXL_MODEL, directory / "sdxl-loha.safetensors", algorithm="loha", seed=72
    )
    return files


def header_shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


@pytest.mark.parametrize("name", ["kohya", "diffusers", *LYCORIS, "sdxl-loha"])
def test_each_layout_is_classified_from_its_tensor_names(tune_files, name):
    shapes = header_shapes(tune_files[name])
    found = tune_formats.classify(shapes, shapes)
    expected = {"kohya": "kohya LoRA", "diffusers": "diffusers/PEFT LoRA", "sdxl-loha": "LyCORIS LoHa"}
    assert found is not None and found.kind == tune_formats.LORA
    assert found.name == expected.get(name, LYCORIS.get(name, ("",))[0])
    marker = LYCORIS.get(name, ("", "hada_w1_a" if name == "sdxl-loha" else ""))[1]
    assert found.supported == (marker == "")
    if marker:
        assert f"{found.name} ({marker} keys, e.g. lora_" in found.unsupported
        assert "is not supported" in found.unsupported


def test_checkpoints_and_unknown_files_are_told_apart():
    ldm = tune_formats.classify(["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x"])
    assert (ldm.kind, ldm.supported) == (tune_formats.CHECKPOINT, True)
    assert tune_formats.classify(["unet.conv_in.weight"]).kind == tune_formats.CHECKPOINT
    assert tune_formats.classify(["encoder.weight"]) is None


@pytest.mark.parametrize("name", ["loha", "lokr", "dora", "sdxl-loha"])
def test_registration_refuses_what_the_worker_cannot_load_naming_the_format(tune_files, name):
    with pytest.raises(InvalidInput) as caught:
        check_safetensors(tune_files[name].read_bytes(), "chunk")
    [violation] = caught.value.violations
    assert violation.field == "chunk"
    marker = {"loha": "hada_w1_a", "lokr": "lokr_w1", "dora": "dora_scale", "sdxl-loha": "hada_w1_a"}[name]
    assert f"({marker} keys, e.g. lora_" in violation.description
    assert violation.description.split(" (")[0] in ("LyCORIS LoHa", "LyCORIS LoKr", "DoRA")


@pytest.mark.parametrize("name", ["kohya", "diffusers", "locon"])
def test_registration_accepts_the_formats_the_worker_loads(tune_files, name):
    check_safetensors(tune_files[name].read_bytes(), "chunk")


def test_registration_reads_the_header_only_so_a_refusal_names_the_first_marker_found():
    header = json.dumps(
        {"lora_unet_x_to_q.hada_w1_a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    ).encode()
    with pytest.raises(
        InvalidInput, match=r"LyCORIS LoHa \(hada_w1_a keys, e.g. lora_unet_x_to_q.hada_w1_a\)"
    ):
        check_safetensors(len(header).to_bytes(8, "little") + header + b"\x00" * 4, "metadata.url")


@pytest.mark.parametrize("tensors", [{"emb_params": [4, 768]}, {"clip_l": [2, 768], "clip_g": [2, 1280]}])
def test_a_textual_inversion_embedding_is_named_as_one_when_registered(tensors):
    """An A1111 embedding (SD1.5's emb_params, SDXL's clip_l/clip_g) is told apart from an unknown file."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2 * shape[0] * shape[1]
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    with pytest.raises(InvalidInput) as caught:
        check_safetensors(len(encoded).to_bytes(8, "little") + encoded + b"\x00" * offset, "chunk")
    [violation] = caught.value.violations
    assert violation.field == "chunk"
    assert violation.description.startswith("is a textual-inversion embedding (tensors ")
    assert "not a LoRA or a checkpoint" in violation.description
    assert tune_formats.classify(["emb_params", "lora_unet_x.lora_down.weight"]).supported


def _lora_spec(tune_id: str, path: Path):
    return spec(
        seed=5,
        loras=[prompt_pb2.LoraRef(tune_id=tune_id, weight=1.0, kind="lora")],
        tune_files={
            tune_id: common_pb2.ObjectRef(
                bucket="multipass-tunes",
                key=f"tunes/t/{tune_id}/lora.safetensors",
                sha256=models.file_sha256(path),
            )
        },
    )


def test_a_locon_loads_and_adapts_the_unet_convolutions_too(engine, tune_files):
    runtime = engine.runtime(SD15_MODEL)
    try:
        base = engine.run(spec(seed=5)).image.tobytes()
        tuned = engine.run(
            _lora_spec("601", tune_files["locon"]), PassInputs(tune_paths={"601": tune_files["locon"]})
        )
        assert tuned.image.tobytes() != base
        unet = runtime.base.pipe.unet
        adapted_convs = [
            name
            for name, module in unet.named_modules()
            if name.endswith("resnets.0.conv1") and hasattr(module, "lora_A")
        ]
        assert adapted_convs
    finally:
        runtime.adapters.deactivate()


@pytest.mark.parametrize(
    ("name", "marker"), [("loha", "hada_w1_a"), ("lokr", "lokr_w1"), ("dora", "dora_scale")]
)
def test_the_worker_refuses_the_same_files_naming_the_tag_and_the_format(engine, tune_files, name, marker):
    path = tune_files[name]
    with pytest.raises(InvalidInput) as caught:
        engine.run(_lora_spec("602", path), PassInputs(tune_paths={"602": path}))
    [violation] = caught.value.violations
    assert violation.field == "<lora:602:1>"
    assert f"({marker} keys" in violation.description and "is not supported" in violation.description
    assert not engine.runtime(SD15_MODEL).adapters.active


def test_a_loaded_locon_still_deactivates_to_the_unmodified_model(engine, tune_files):
    runtime = engine.runtime(SD15_MODEL)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, runtime.base.cross_attention_dim, generator=generator)
    unet = runtime.base.pipe.unet

    def output():
        with torch.no_grad():
            return unet(sample, 500, context).sample

    before = output()
    engine.run(_lora_spec("603", tune_files["locon"]), PassInputs(tune_paths={"603": tune_files["locon"]}))
    runtime.adapters.deactivate()
    assert torch.equal(output(), before)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_down.weight"], "ComfyUI LoRA"),
        (["text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"],
         "ComfyUI LoRA"),
        (["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_linear_layer.down.weight"],
         "diffusers/PEFT LoRA"),
        (["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"],
         "diffusers/PEFT LoRA"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "single-file checkpoint (A1111/LDM layout)"),
    ],
)  # fmt: skip
def test_loadable_formats_are_named(names, expected):
    found = tune_formats.classify(names)
    assert found is not None and found.supported and found.name == expected


def test_a_comfyui_lora_with_a_second_text_encoder_is_an_sdxl_tune(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "comfy-xl.safetensors"
    save_file(
        {
            "text_encoders.clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight": torch.zeros(
                2, 8
            ),
            "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.lora_down.weight": torch.zeros(
                2, 2048
            ),
        },
        str(path),
    )
    found = models.inspect_tune(path, "tune")
    assert (found.kind, found.layout, found.cross_attention_dim, found.has_second_text_encoder) == (
        "lora",
        "comfyui",
        2048,
        True,
    )
