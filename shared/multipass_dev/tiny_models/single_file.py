"""Write a diffusers-format SD1.5 or SDXL pipeline as one A1111/civitai ``.safetensors`` checkpoint.

The original (LDM / "stable-diffusion-webui") key layout, as the published single files have it:

- UNet under ``model.diffusion_model.``: ``input_blocks.N.M``, ``middle_block.N``, ``output_blocks.N.M``,
  ``time_embed``, ``label_emb`` (SDXL), ``out``; ResNets with ``in_layers``/``emb_layers``/``out_layers``
  and ``skip_connection``; transformers under the same names as diffusers;
- VAE under ``first_stage_model.``: ``encoder.down.N.block.M``, ``decoder.up.N.block.M`` (up blocks in
  reverse order), ``mid.block_1``/``attn_1``/``block_2`` with 1x1-convolution attention (``q``, ``k``,
  ``v``, ``proj_out``, ``norm``), ``nin_shortcut``;
- text encoders: SD1.5 ``cond_stage_model.transformer.`` + the transformers CLIP names; SDXL
  ``conditioner.embedders.0.transformer.`` (CLIP ViT-L) and ``conditioner.embedders.1.model.`` in
  OpenCLIP's layout (``transformer.resblocks.N.attn.in_proj_weight`` with q, k, v stacked,
  ``positional_embedding``, ``ln_final``, ``text_projection`` transposed).

Tests turn tiny (and, for the full-size check, real-size random) pipelines into such files and load them
through the worker's single-file loading, which uses diffusers' converter the other way round.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def unet_to_ldm(state: dict, config: dict) -> dict:
    """A diffusers ``UNet2DConditionModel`` state dict in the LDM layout (without the key prefix)."""
    per_level = int(config["layers_per_block"]) + 1
    up_types = config["up_block_types"]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "class_embedding.linear_1": "label_emb.0.0",
        "class_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    converted = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        if module in fixed:
            converted[f"{fixed[module]}.{kind}"] = tensor
            continue
        converted[_unet_key(key, per_level, up_types)] = tensor
    return converted


def _unet_key(key: str, per_level: int, up_types) -> str:
    match = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", key)
    if match:
        block, part, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        if part == "downsamplers":
            return f"input_blocks.{(block + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
        target = 1 + block * per_level + index
        return (
            f"input_blocks.{target}.0.{_resnet(rest)}"
            if part == "resnets"
            else f"input_blocks.{target}.1.{rest}"
        )
    match = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", key)
    if match:
        block, part, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        if part == "upsamplers":
            slot = 2 if up_types[block].startswith("CrossAttn") else 1
            return f"output_blocks.{block * per_level + per_level - 1}.{slot}.{rest}"
        target = block * per_level + index
        return (
            f"output_blocks.{target}.0.{_resnet(rest)}"
            if part == "resnets"
            else f"output_blocks.{target}.1.{rest}"
        )
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if match:
        part, index, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * index}.{_resnet(rest)}" if part == "resnets" else f"middle_block.1.{rest}"
    raise ValueError(f"no LDM name for UNet parameter {key!r}")


def vae_to_ldm(state: dict, config: dict) -> dict:
    """A diffusers ``AutoencoderKL`` state dict in the LDM layout (without the key prefix)."""
    levels = len(config["block_out_channels"])
    converted = {}
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        match = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$", new)
        if match:
            level = levels - 1 - int(match[1])
            new = (
                f"decoder.up.{level}.block.{match[3]}.{match[4]}"
                if match[2] == "resnets"
                else f"decoder.up.{level}.upsample.{match[4]}"
            )
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", new)
        if attention:
            name = _VAE_ATTENTION[attention[2]]
            if attention[3] == "weight" and name != "norm":
                tensor = tensor.reshape(*tensor.shape, 1, 1)
            new = f"{attention[1]}.mid.attn_1.{name}.{attention[3]}"
        converted[new.replace("conv_shortcut", "nin_shortcut")] = tensor
    return converted


def open_clip_to_ldm(state: dict) -> dict:
    """A transformers ``CLIPTextModelWithProjection`` state dict in OpenCLIP's layout (no prefix)."""
    import torch

    converted = {}
    layers: dict[str, dict[str, object]] = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        match = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", key)
        if match:
            layers.setdefault(match[1], {})[match[2]] = tensor
            continue
        mapped = {
            "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
            "text_model.embeddings.position_embedding.weight": "positional_embedding",
            "text_model.final_layer_norm.weight": "ln_final.weight",
            "text_model.final_layer_norm.bias": "ln_final.bias",
        }
        if key == "text_projection.weight":
            converted["text_projection"] = tensor.T.contiguous()
        elif key in mapped:
            converted[mapped[key]] = tensor
        else:
            raise ValueError(f"no OpenCLIP name for text encoder parameter {key!r}")
    for index, parts in layers.items():
        prefix = f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            converted[f"{prefix}attn.in_proj_{kind}"] = torch.cat(
                [parts.pop(f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
        renames = {
            "self_attn.out_proj": "attn.out_proj",
            "layer_norm1": "ln_1",
            "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc",
            "mlp.fc2": "mlp.c_proj",
        }
        for name, tensor in parts.items():
            module, _, kind = name.rpartition(".")
            converted[f"{prefix}{renames[module]}.{kind}"] = tensor
    return converted


def _component_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (directory / name).is_file():
            return load_file(str(directory / name))
    raise FileNotFoundError(f"no safetensors weights in {directory}")


def pipeline_to_ldm(pipeline_dir: Path) -> dict:
    """Every component of the diffusers pipeline at ``pipeline_dir`` in one LDM-layout state dict."""
    pipeline_dir = Path(pipeline_dir)
    unet_config = json.loads((pipeline_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((pipeline_dir / "vae" / "config.json").read_text())
    state = {
        f"model.diffusion_model.{k}": v
        for k, v in unet_to_ldm(_component_state(pipeline_dir / "unet"), unet_config).items()
    }
    state.update(
        {
            f"first_stage_model.{k}": v
            for k, v in vae_to_ldm(_component_state(pipeline_dir / "vae"), vae_config).items()
        }
    )
    # transformers 5 saves CLIPTextModel without its ``text_model.`` level; the published files have it.
    text = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in _component_state(pipeline_dir / "text_encoder").items()
        if "position_ids" not in k
    }
    if (pipeline_dir / "text_encoder_2").is_dir():
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in text.items()})
        second = open_clip_to_ldm(_component_state(pipeline_dir / "text_encoder_2"))
        state.update({f"conditioner.embedders.1.model.{k}": v for k, v in second.items()})
    else:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in text.items()})
    return state


def write_single_file(pipeline_dir: Path, out_path: Path, *, dtype=None) -> Path:
    """Write the pipeline at ``pipeline_dir`` as one LDM-layout ``.safetensors`` file (optionally cast)."""
    from safetensors.torch import save_file

    state = pipeline_to_ldm(pipeline_dir)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path))
    return out_path
