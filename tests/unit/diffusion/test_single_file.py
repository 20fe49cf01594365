"""Checkpoints as users have them: one A1111/civitai ``.safetensors`` file (SD1.5, SDXL) as a base model or
a checkpoint tune, converted offline with a local config; the shipped configs are the real architectures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, TINY_WORKING_SIZE, spec
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from multipass.errors import FailedPrecondition
from multipass_dev.tiny_models.single_file import pipeline_to_ldm, write_single_file
from multipass_diffusion import models, single_file
from multipass_diffusion.models import file_sha256
from multipass_diffusion.passes.context import PassInputs

CONFIG_FILES = ("model_index.json", "*/config.json", "*/scheduler_config.json", "tokenizer*/*")


def copy_configs(pipeline_dir: Path, target: Path) -> Path:
    """A diffusers-format config directory (no weights) of the pipeline at ``pipeline_dir``."""
    for pattern in CONFIG_FILES:
        for file in pipeline_dir.glob(pattern):
            destination = target / file.relative_to(pipeline_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, destination)
    return target


def state_dicts_equal(expected, loaded) -> list[str]:
    """Names of the parameters and buffers that differ (or are missing) between two modules."""
    a, b = expected.state_dict(), loaded.state_dict()
    return sorted(k for k in a if k not in b or b[k].is_meta or not torch.equal(a[k], b[k].to(a[k].dtype)))


@pytest.fixture(scope="module")
def sd15_single(model_root, tmp_path_factory) -> Path:
    """A model directory with the tiny SD1.5 model as ``diffusion/sd15-single.safetensors`` + its config."""
    root = tmp_path_factory.mktemp("single-file")
    source = model_root / "diffusion" / SD15_MODEL
    write_single_file(source, root / "diffusion" / "sd15-single.safetensors")
    copy_configs(source, single_file.config_override(root / "diffusion" / "sd15-single.safetensors"))
    return root


def test_the_file_has_the_original_layout_and_is_discovered_as_an_sd15_model(sd15_single):
    path = sd15_single / "diffusion" / "sd15-single.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert {
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    } <= keys
    assert not any(key.startswith(("unet.", "vae.", "text_encoder.")) for key in keys)
    [entry] = models.discover(sd15_single).values()
    assert (entry.name, entry.family, entry.is_single_file) == ("sd15-single", "sd15", True)
    assert entry.config_dir == sd15_single / "diffusion" / "sd15-single.config"
    assert entry.inpaint_unet_path is None


def test_an_sd15_single_file_loads_every_weight_of_the_diffusers_model(model_root, sd15_single):
    [entry] = models.discover(sd15_single).values()
    pipe = models.load_pipeline(entry, device="cpu", dtype=torch.float32)
    reference = models.load_pipeline(
        models.discover(model_root)[SD15_MODEL], device="cpu", dtype=torch.float32
    )
    for name in ("unet", "vae", "text_encoder"):
        assert state_dicts_equal(getattr(reference, name), getattr(pipe, name)) == [], name


def test_the_worker_serves_a_single_file_model_like_the_same_weights_in_diffusers_format(engine, sd15_single):
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.settings import DiffusionSettings

    settings = DiffusionSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(sd15_single),
            "MULTIPASS_DIFFUSION_MODELS": "sd15-single",
            "MULTIPASS_DIFFUSION_DEVICE": "cpu",
            "MULTIPASS_DIFFUSION_WORKING_SIZE": str(TINY_WORKING_SIZE),
            "MULTIPASS_DIFFUSION_TORCH_THREADS": "1",
        }
    )
    served = Engine(settings)
    served.load()
    assert served.runtime("sd15-single").family == "sd15"
    single = served.run(spec("sd15-single", seed=11)).image
    assert single.tobytes() == engine.run(spec(SD15_MODEL, seed=11)).image.tobytes()


def _tiny_sdxl_with_distinct_encoders(model_root: Path, target: Path) -> Path:
    """The tiny SDXL with a 48-wide second text encoder (the real SDXL's two encoders differ in width,
    which is how a converter tells their weights apart) saved in diffusers format at ``target``."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    source = StableDiffusionXLPipeline.from_pretrained(
        model_root / "diffusion" / SDXL_MODEL, local_files_only=True
    )
    torch.manual_seed(20)
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=24,
    )
    encoder_2 = CLIPTextModelWithProjection(config)
    unet_config = dict(source.unet.config)
    unet_config.update(cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=6 * 8 + 24)
    pipe = StableDiffusionXLPipeline(
        vae=source.vae,
        text_encoder=source.text_encoder,
        text_encoder_2=encoder_2,
        tokenizer=source.tokenizer,
        tokenizer_2=source.tokenizer_2,
        unet=UNet2DConditionModel.from_config(unet_config),
        scheduler=source.scheduler,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def test_an_sdxl_single_file_loads_both_text_encoders_and_the_unet(model_root, tmp_path):
    source = _tiny_sdxl_with_distinct_encoders(model_root, tmp_path / "sdxl-diffusers")
    path = write_single_file(source, tmp_path / "models" / "diffusion" / "xl.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert {
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
        "model.diffusion_model.label_emb.0.0.weight",
    } <= keys
    copy_configs(source, single_file.config_override(path))
    [entry] = models.discover(tmp_path / "models").values()
    assert entry.family == "sdxl"
    pipe = models.load_pipeline(entry, device="cpu", dtype=torch.float32)
    from diffusers import StableDiffusionXLPipeline

    reference = StableDiffusionXLPipeline.from_pretrained(source, local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert state_dicts_equal(getattr(reference, name), getattr(pipe, name)) == [], name


def test_a_checkpoint_without_a_config_uses_the_shipped_config_of_its_family(tmp_path):
    path = tmp_path / "diffusion" / "x.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)}, str(path))
    assert single_file.config_dir(path, "sd15") == single_file.SHIPPED_CONFIGS / "sd15"
    assert single_file.config_dir(path, "sdxl") == single_file.SHIPPED_CONFIGS / "sdxl"


@pytest.mark.parametrize(
    ("component", "parameters"),
    [
        # The published parameter counts of SD1.5's and SDXL base 1.0's components.
        ("sd15/unet", 859_520_964),
        ("sdxl/unet", 2_567_463_684),
        ("sd15/vae", 83_653_863),
        ("sdxl/vae", 83_653_863),
        ("sd15/text_encoder", 123_060_480),
        ("sdxl/text_encoder", 123_060_480),
        ("sdxl/text_encoder_2", 694_659_840),
    ],
)
def test_the_shipped_configs_describe_the_real_architectures(component, parameters):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    directory = single_file.SHIPPED_CONFIGS / component
    with torch.device("meta"):
        if component.endswith("unet"):
            model = UNet2DConditionModel.from_config(json.loads((directory / "config.json").read_text()))
        elif component.endswith("vae"):
            model = AutoencoderKL.from_config(json.loads((directory / "config.json").read_text()))
        else:
            config = CLIPTextConfig.from_pretrained(directory)
            model = (CLIPTextModelWithProjection if component.endswith("_2") else CLIPTextModel)(config)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_the_shipped_tokenizers_are_clip_with_its_real_vocabulary(engine):
    reference = engine.runtime(SD15_MODEL).base.pipe.tokenizer  # built from open_clip's BPE merges
    built = single_file.tokenizers(single_file.SHIPPED_CONFIGS / "sdxl")
    assert set(built) == {"tokenizer", "tokenizer_2"}
    prompt = "a photo of an astronaut riding a horse, 85mm, golden hour"
    ids = built["tokenizer"](prompt, padding="max_length").input_ids
    assert ids == reference(prompt, padding="max_length").input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[ids.index(49407) + 1] == 49407
    assert built["tokenizer_2"](prompt, padding="max_length").input_ids[-1] == built[
        "tokenizer_2"
    ].convert_tokens_to_ids("!")
    assert single_file.tokenizers(single_file.SHIPPED_CONFIGS / "sd15").keys() == {"tokenizer"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["cond_stage_model.model.token_embedding.weight"], "is an SD2.x checkpoint"),
        (["conditioner.embedders.0.model.text_projection"], "is an SDXL refiner checkpoint"),
        (["encoder.weight"], "is not an SD1.5 or SDXL single-file checkpoint"),
    ],
)
def test_other_checkpoints_are_refused_naming_the_file(tmp_path, keys, message):
    path = tmp_path / "diffusion" / "other.safetensors"
    path.parent.mkdir(parents=True)
    save_file({key: torch.zeros(2) for key in keys}, str(path))
    with pytest.raises(FailedPrecondition, match=message) as caught:
        models.discover(tmp_path)
    assert str(path) in str(caught.value)


def test_a_file_missing_weights_is_refused_instead_of_running_uninitialised(sd15_single, tmp_path):
    source = sd15_single / "diffusion" / "sd15-single.safetensors"
    state = {k: v for k, v in load_file(str(source)).items() if "final_layer_norm" not in k}
    target = tmp_path / "diffusion" / "partial.safetensors"
    target.parent.mkdir(parents=True)
    save_file(state, str(target))
    shutil.copytree(single_file.config_override(source), single_file.config_override(target))
    [entry] = models.discover(tmp_path).values()
    with pytest.raises(
        FailedPrecondition, match=r"2 weights of the sd15 config .* are not in the file"
    ) as caught:
        models.load_pipeline(entry, device="cpu", dtype=torch.float32)
    assert "text_encoder.final_layer_norm.weight" in str(caught.value)


def test_an_ldm_checkpoint_tune_runs_like_the_same_weights_in_diffusers_layout(engine, tmp_path):
    """A civitai checkpoint tune is converted with the base model's configs, to the same network."""
    from test_adapters import tuned

    runtime = engine.runtime(SD15_MODEL)
    tuned_model = tmp_path / "tuned"
    shutil.copytree(runtime.entry.path, tuned_model, ignore=shutil.ignore_patterns("unet_inpaint"))
    unet_file = tuned_model / "unet" / "diffusion_pytorch_model.safetensors"
    generator = torch.Generator().manual_seed(8)
    save_file(
        {
            k: v + 0.02 * torch.randn(v.shape, generator=generator)
            for k, v in load_file(str(unet_file)).items()
        },
        str(unet_file),
    )
    ldm = write_single_file(tuned_model, tmp_path / "ldm.safetensors")
    assert set(pipeline_to_ldm(tuned_model)) == set(load_file(str(ldm)))
    layered = {f"unet.{k}": v for k, v in load_file(str(unet_file)).items()}
    layered.update(
        {
            f"text_encoder.{k}": v
            for k, v in load_file(str(tuned_model / "text_encoder" / "model.safetensors")).items()
        }
    )
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file(layered, str(diffusers_file))
    assert models.inspect_tune(ldm, "tag").layout == "ldm"
    outputs = {}
    for tune_id, path in (("410", ldm), ("411", diffusers_file)):
        checkpoint_spec, paths = tuned({"seed": 12}, {tune_id: path})
        outputs[tune_id] = engine.run(checkpoint_spec, PassInputs(tune_paths=paths)).image.tobytes()
    assert outputs["410"] == outputs["411"]
    assert outputs["410"] != engine.run(spec(seed=12)).image.tobytes()
    components, _ = runtime.components_for("410", ldm, file_sha256(ldm), "ldm")
    assert components.pipe.vae is runtime.base.pipe.vae
