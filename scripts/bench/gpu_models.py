"""The real SD1.5 and SDXL architectures with random weights, for the GPU bench (``multipass_bench.gpu``).

The component configs (UNet, VAE, CLIP text encoder(s)) are the published ones of runwayml SD1.5 and
SDXL base 1.0; ``*_TINY`` are the same architectures, tiny (the shapes of ``multipass_dev.tiny_models``).
:func:`build_model` gives them random weights and saves them in diffusers format, with the CLIP BPE
vocabulary derived offline as for the tiny models (no download).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

#: Native (base pass) side per (family, tiny).
NATIVE = {("sd15", False): 512, ("sdxl", False): 1024, ("sd15", True): 64, ("sdxl", True): 64}
BUILD_VERSION = "bench-gpu-v1"

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int) -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "projection_dim": projection,
        "layer_norm_eps": 1e-05,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }


def _vae(channels, layers: int, groups: int, sample: int, scaling: float, upcast: bool) -> dict:
    return {
        "act_fn": "silu",
        "block_out_channels": list(channels),
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": layers,
        "norm_num_groups": groups,
        "sample_size": sample,
        "scaling_factor": scaling,
        "force_upcast": upcast,
    }


#: runwayml/stable-diffusion-v1-5 (unet, vae, text_encoder = CLIP ViT-L/14 text tower).
SD15 = {
    "unet": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    },
    "vae": _vae((128, 256, 512, 512), 2, 32, 512, 0.18215, False),
    "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", 768),
}
#: stabilityai/stable-diffusion-xl-base-1.0 (text_encoder_2 = OpenCLIP ViT-bigG/14 text tower).
SDXL = {
    "unet": {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    "vae": _vae((128, 256, 512, 512), 2, 32, 1024, 0.13025, True),
    "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", 768),
    "text_encoder_2": _clip_text(1280, 32, 20, 5120, "gelu", 1280),
}
#: The same architectures, tiny (the shapes of multipass_dev.tiny_models).
SD15_TINY = {
    "unet": {
        **SD15["unet"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    "vae": _vae((8, 16, 32, 32), 1, 8, 64, 0.18215, False),
    "text_encoder": _clip_text(32, 2, 2, 64, "quick_gelu", 32),
}
SDXL_TINY = {
    "unet": {
        **SDXL["unet"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 8,
        "attention_head_dim": [2, 4],
        "addition_time_embed_dim": 8,
        "addition_embed_type_num_heads": 8,
        "transformer_layers_per_block": [1, 2],
        "projection_class_embeddings_input_dim": 6 * 8 + 32,
        "cross_attention_dim": 64,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
    },
    "vae": _vae((8, 16, 32, 32), 1, 8, 64, 0.13025, True),
    "text_encoder": _clip_text(32, 2, 2, 64, "quick_gelu", 32),
    "text_encoder_2": _clip_text(32, 2, 2, 64, "gelu", 32),
}
CONFIGS = {("sd15", False): SD15, ("sdxl", False): SDXL, ("sd15", True): SD15_TINY, ("sdxl", True): SDXL_TINY}


def model_name(family: str, tiny: bool) -> str:
    return f"{family}-{'tinycfg' if tiny else 'random'}"


def build_model(root: Path, family: str, *, tiny: bool, device: str, dtype) -> Path:
    """Random weights for ``family``'s configs saved in diffusers format under ``root/diffusion/<name>``."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    configs = CONFIGS[(family, tiny)]
    target = Path(root) / "diffusion" / model_name(family, tiny)
    marker = target / ".bench-gpu-built"
    stamp = BUILD_VERSION + json.dumps(configs, sort_keys=True)
    if marker.is_file() and marker.read_text() == stamp:
        return target
    tokenizer_files = _vocab(Path(root) / ".clip-vocab")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
            if "text_encoder_2" in configs
            else None
        )
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **modules,
            text_encoder_2=text_encoder_2,
            tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
            tokenizer_2=_tokenizer(tokenizer_files, "!"),
            scheduler=EulerDiscreteScheduler(**_SCHEDULER, timestep_spacing="leading"),
        )
    else:
        pipe = StableDiffusionPipeline(
            **modules,
            tokenizer=_tokenizer(tokenizer_files, "<|endoftext|>"),
            scheduler=PNDMScheduler(**_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(target, safe_serialization=True)
    marker.write_text(stamp)
    del pipe, modules, unet, vae, text_encoder, text_encoder_2
    gc.collect()
    return target


def _vocab(directory: Path):
    # The CLIP BPE vocabulary exactly as the tiny models derive it (offline, from open_clip's merges).
    from multipass_dev.tiny_models.diffusion import _write_clip_vocab

    return _write_clip_vocab(directory)


def _tokenizer(files, pad_token: str):
    from multipass_dev.tiny_models.diffusion import _tokenizer as tokenizer

    return tokenizer(files, pad_token)
