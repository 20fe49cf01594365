"""Tiny random-weight diffusion models of the real architectures, in the model-directory layout.

``build(root)`` writes, once, under ``root/"diffusion"``:

- ``sd15-tiny/``: an SD1.5-family pipeline in diffusers format (UNet, 4-block VAE with the real x8
  factor, CLIP text encoder, a CLIP tokenizer with the real BPE vocabulary, scheduler) plus
  ``unet_inpaint/`` (9 input channels);
- ``sdxl-tiny/``: an SDXL-family pipeline (two text encoders, text-time conditioning), no inpainting UNet;
- ``controlnet/<kind>/``: one SD1.5 ControlNet per kind; ``controlnet/sdxl/<kind>/``: SDXL ControlNets
  for ``pose`` and ``canny``;
- ``preprocessors/hed/ControlNetHED.pth``: ControlNet 1.1's HED network with random weights (the other
  weight-needing preprocessors are left out on purpose, so a missing one can be observed);
- ``ip_adapter/<family>/faceid/ip-adapter-faceid.safetensors``: a random IP-Adapter FaceID per family
  (512-d identity in, 4 tokens out; non-zero ``to_k_ip``/``to_v_ip`` on every cross-attention), the SD1.5
  one with the FaceID LoRA on every attention too, like the released ``ip-adapter-faceid_sd15.bin``;
- ``ip_adapter/<family>/composition/ip_plus_composition_<family>.safetensors``: a random IP Composition
  Adapter per family, and ``ip_adapter/image_encoder/``: the tiny CLIP vision model it reads
  (:mod:`multipass_dev.tiny_models.ip_adapters`);
- ``loras/``: named LoRAs, ``<lora:detail-tweaker:W>`` (SD1.5, kohya layout as A1111 users have them) and
  ``<lora:sdxl-film-look:W>`` (SDXL).

Every model is loaded by the production loading code. The CLIP vocabulary is derived offline from the
BPE merges that ``open_clip`` ships, so tokenisation matches the real models token for token.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from multipass_dev.tiny_models.building import build_once, byte_to_unicode
from multipass_dev.tiny_models.ip_adapters import (
    composition_path,
    encoder_path,
    faceid_path,
    write_composition_adapter,
    write_faceid_adapter,
    write_image_encoder,
)

#: Bump when the layout or the architectures change; a directory with another marker is rebuilt.
VERSION = "tiny-diffusion-v8"
MARKER = ".tiny-diffusion-built"
SD15_MODEL = "sd15-tiny"
SDXL_MODEL = "sdxl-tiny"
#: Named LoRAs of the tiny model directory, by name: (model they are made for, file written).
NAMED_LORAS = {"detail-tweaker": SD15_MODEL, "sdxl-film-look": SDXL_MODEL}
SD15_CONTROLNETS = ("pose", "canny", "depth", "lineart", "mlsd", "hed", "tile", "qr")
SDXL_CONTROLNETS = ("pose", "canny")
#: Working size (short side) that suits these models in tests and the local stack.
TINY_WORKING_SIZE = 64

_SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def build(root: Path) -> None:
    """Write the tiny diffusion models under ``root/"diffusion"`` unless this version is already there."""
    build_once(
        Path(root) / "diffusion",
        marker=MARKER,
        version=VERSION,
        lock=".build.lock",
        replaces=(SD15_MODEL, SDXL_MODEL, "controlnet", "preprocessors", "ip_adapter", "loras"),
        write=_write_all,
    )


def _write_all(base: Path) -> None:
    tokenizer_files = _write_clip_vocab(base / ".clip-vocab")
    _build_sd15(base, tokenizer_files)
    _build_sdxl(base, tokenizer_files)
    _build_preprocessors(base / "preprocessors")
    write_image_encoder(encoder_path(base), seed=540)
    for number, (name, model) in enumerate(NAMED_LORAS.items()):
        path = base / "loras" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_random_lora(base / model, path, seed=700 + number, kohya=model == SD15_MODEL)


def _write_clip_vocab(directory: Path) -> tuple[Path, Path]:
    """Derive the HF ``vocab.json``/``merges.txt`` pair from open_clip's BPE merges (49408 tokens)."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(byte_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(merge) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps({token: index for index, token in enumerate(vocab)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_path, merges_path


def _tokenizer(files: tuple[Path, Path], pad_token: str):
    from transformers import CLIPTokenizer

    vocab = json.loads(files[0].read_text())
    merges = [tuple(line.split()) for line in files[1].read_text().split("\n")[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)


def _text_config(*, hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        layer_norm_eps=1e-05,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=projection,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )


def _sd15_unet_config(in_channels: int) -> dict:
    return {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "sample_size": 8,
        "in_channels": in_channels,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }


def _build_sd15(base: Path, tokenizer_files: tuple[Path, Path]) -> None:
    import torch
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_sd15_unet_config(4))
    torch.manual_seed(1)
    unet_inpaint = UNet2DConditionModel(**_sd15_unet_config(9))
    torch.manual_seed(2)
    vae = _vae()
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(_text_config(hidden=32, projection=32))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
        scheduler=DDIMScheduler(**_SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = base / SD15_MODEL
    pipe.save_pretrained(target, safe_serialization=True)
    unet_inpaint.save_pretrained(target / "unet_inpaint", safe_serialization=True)
    write_faceid_adapter(unet, faceid_path(base, "sd15"), seed=500, lora_rank=4)
    write_composition_adapter(unet, composition_path(base, "sd15"), seed=520)
    for index, kind in enumerate(SD15_CONTROLNETS):
        torch.manual_seed(100 + index)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        _randomise_zero_convs(controlnet)
        controlnet.save_pretrained(base / "controlnet" / kind, safe_serialization=True)


def _build_sdxl(base: Path, tokenizer_files: tuple[Path, Path]) -> None:
    import torch
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(10)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    torch.manual_seed(11)
    vae = _vae()
    torch.manual_seed(12)
    text_encoder = CLIPTextModel(_text_config(hidden=32, projection=32))
    torch.manual_seed(13)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden=32, projection=32))
    scheduler = DDIMScheduler(**_SD15_SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
        tokenizer_2=_tokenizer(tokenizer_files, "!"),
        scheduler=scheduler,
    )
    pipe.save_pretrained(base / SDXL_MODEL, safe_serialization=True)
    write_faceid_adapter(unet, faceid_path(base, "sdxl"), seed=510)
    write_composition_adapter(unet, composition_path(base, "sdxl"), seed=530)
    for index, kind in enumerate(SDXL_CONTROLNETS):
        torch.manual_seed(200 + index)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        _randomise_zero_convs(controlnet)
        controlnet.save_pretrained(base / "controlnet" / "sdxl" / kind, safe_serialization=True)


def _randomise_zero_convs(controlnet) -> None:
    """A fresh ControlNet adds exact zeros (zero convolutions); give it weights so its conditioning shows."""
    import torch

    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if (
                "zero_conv" in name
                or "controlnet_down_blocks" in name
                or "controlnet_mid_block" in name
                or "controlnet_cond_embedding.conv_out" in name
            ):
                parameter.normal_(0.0, 0.05)


def _build_preprocessors(base: Path) -> None:
    """ControlNet 1.1's HED at its published (and only) size, random weights in the published file format."""
    import torch

    from multipass_diffusion.annotators import HedNetwork

    torch.manual_seed(300)
    state = {key: value.half() for key, value in HedNetwork().state_dict().items()}  # half: 29 MB, not 59
    (base / "hed").mkdir(parents=True, exist_ok=True)
    torch.save(state, base / "hed" / "ControlNetHED.pth")


def write_random_lora(
    model_dir: Path,
    out_path: Path,
    *,
    seed: int,
    rank: int = 4,
    kohya: bool = False,
    text_encoder: bool = True,
    alpha: float | None = None,
    metadata: bool = False,
    alpha_pattern: dict[str, float] | None = None,
) -> Path:
    """Write a LoRA with random (non-zero) ``lora_A`` and ``lora_B`` for the diffusers model at ``model_dir``.

    ``kohya=True`` writes kohya/A1111 key names (``lora_unet_*.lora_down.weight`` + ``alpha``); otherwise the
    diffusers/PEFT layout (``unet.*.lora_A.weight``). Used by tests and by the local stack's demo tunes.

    ``alpha`` (default: ``rank``, scale 1) is every module's LoRA alpha: the kohya ``alpha`` tensors, or,
    diffusers layout, the ``lora_alpha`` of the LoraConfig that ``metadata=True`` writes per component into
    the safetensors header (``lora_adapter_metadata``, with ``diffusers``' own ``save_lora_weights``), the
    only place a diffusers-format file can carry it; ``alpha_pattern`` adds per-module alphas to the
    UNet's config there.
    """
    import torch
    from safetensors.torch import save_file

    alpha = float(rank) if alpha is None else float(alpha)
    if kohya and (metadata or alpha_pattern):
        raise ValueError("kohya files carry their alphas as tensors, not as adapter metadata")
    if not kohya and not metadata and (alpha != rank or alpha_pattern):
        raise ValueError("a diffusers-format LoRA carries alpha != rank only in its metadata (metadata=True)")
    model_dir = Path(model_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    modules = [("unet", model_dir / "unet")]
    if text_encoder:
        modules.append(("text_encoder", model_dir / "text_encoder"))
        if (model_dir / "text_encoder_2").is_dir():
            modules.append(("text_encoder_2", model_dir / "text_encoder_2"))
    for prefix, directory in modules:
        for name, (out_features, in_features) in _lora_targets(prefix, directory):
            down = torch.randn(rank, in_features, generator=generator) * 0.3
            up = torch.randn(out_features, rank, generator=generator) * 0.3
            if kohya:
                kohya_prefix = {
                    "unet": "lora_unet",
                    "text_encoder": "lora_te1",
                    "text_encoder_2": "lora_te2",
                }[prefix]
                if prefix == "text_encoder" and not (model_dir / "text_encoder_2").is_dir():
                    kohya_prefix = "lora_te"
                key = f"{kohya_prefix}_{name.replace('.', '_')}"
                tensors[f"{key}.lora_down.weight"] = down
                tensors[f"{key}.lora_up.weight"] = up
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
            else:
                tensors[f"{prefix}.{name}.lora_A.weight"] = down
                tensors[f"{prefix}.{name}.lora_B.weight"] = up
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        _save_with_adapter_metadata(
            tensors, out_path, [p for p, _ in modules], rank, alpha, alpha_pattern or {}
        )
    else:
        save_file(tensors, str(out_path))
    return out_path


def _save_with_adapter_metadata(
    tensors: dict, out_path: Path, prefixes: list[str], rank: int, alpha: float, alpha_pattern: dict
) -> None:
    """Save a diffusers-layout LoRA with each component's LoraConfig in the header, as trainers do."""
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin
    from peft import LoraConfig

    targets = {"unet": ["to_q", "to_k", "to_v", "to_out.0"]}
    layers, configs = {}, {}
    for prefix in prefixes:
        layers[prefix] = {
            k.removeprefix(f"{prefix}."): v for k, v in tensors.items() if k.startswith(f"{prefix}.")
        }
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            alpha_pattern=dict(alpha_pattern) if prefix == "unet" else {},
            target_modules=targets.get(prefix, ["q_proj", "k_proj", "v_proj", "out_proj"]),
        )
        configs[prefix] = config.to_dict()
    # The SDXL saver writes any of unet / text_encoder / text_encoder_2 (absent ones are skipped).
    StableDiffusionXLLoraLoaderMixin.save_lora_weights(
        out_path.parent,
        unet_lora_layers=layers.get("unet"),
        text_encoder_lora_layers=layers.get("text_encoder"),
        text_encoder_2_lora_layers=layers.get("text_encoder_2"),
        weight_name=out_path.name,
        unet_lora_adapter_metadata=configs.get("unet"),
        text_encoder_lora_adapter_metadata=configs.get("text_encoder"),
        text_encoder_2_lora_adapter_metadata=configs.get("text_encoder_2"),
    )


def _lora_targets(prefix: str, directory: Path) -> list[tuple[str, tuple[int, int]]]:
    """(module name, (out, in)) of the attention projections a LoRA trainer targets."""
    from safetensors import safe_open

    path = directory / "diffusion_pytorch_model.safetensors"
    if not path.exists():
        path = directory / "model.safetensors"
    targets = []
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if not key.endswith(".weight"):
                continue
            module = key[: -len(".weight")]
            if prefix == "unet":
                wanted = (
                    any(module.endswith(p) for p in ("to_q", "to_k", "to_v", "to_out.0"))
                    and "attentions" in module
                )
            else:
                wanted = (
                    any(module.endswith(p) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
                    and "encoder.layers" in module
                )
            if wanted:
                shape = handle.get_slice(key).get_shape()
                targets.append((module, (shape[0], shape[1])))
    return sorted(targets)
