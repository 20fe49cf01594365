"""Tiny random IP-Adapters in the released files' layouts: FaceID, and the IP Composition Adapter with its
CLIP image encoder.

``write_faceid_adapter``: ``ip-adapter-faceid`` (512-d identity through an MLP to 4 tokens).
``write_composition_adapter``: ``ip_plus_composition_<family>.safetensors`` as ``ostris/ip-composition-
adapter`` releases it, an IP-Adapter Plus (the original IP-Adapter ``Resampler``'s parameter names:
``latents``, ``proj_in``, ``layers.<i>.0`` perceiver attention with ``to_q``/``to_kv``/``to_out``,
``layers.<i>.1`` feed-forward, ``proj_out``, ``norm_out``; 4 layers of 64-d heads, 16 queries).
``write_image_encoder``: a transformers ``CLIPVisionModelWithProjection`` (h94/IP-Adapter's
``models/image_encoder`` layout: ``config.json`` + ``model.safetensors``). Every weight is non-zero, so the
adapters visibly change the UNet's output.
"""

from __future__ import annotations

from pathlib import Path

from multipass.model_catalog import layout

FACEID_FILE = "ip-adapter-faceid.safetensors"
FACEID_TOKENS = 4
FACEID_EMBEDDING_SIZE = 512
COMPOSITION_QUERIES = 16
#: The Resampler's width and depth (diffusers reads 64-d heads and 4 layers from the released files).
COMPOSITION_WIDTH = 64
COMPOSITION_DEPTH = 4
ENCODER_WIDTH = 32


def faceid_path(diffusion_root: Path, family: str) -> Path:
    return Path(diffusion_root) / "ip_adapter" / family / "faceid" / FACEID_FILE


def composition_path(diffusion_root: Path, family: str) -> Path:
    return layout.composition_weights(Path(diffusion_root).parent, family)


def encoder_path(diffusion_root: Path) -> Path:
    return Path(diffusion_root) / Path(layout.IMAGE_ENCODER_FILES[0]).parent


def _random(seed: int, scale: float):
    import torch

    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int, std: float = scale) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    return random


def _attention_weights(unet, random, *, width: int, lora_rank: int = 0) -> dict:
    """``ip_adapter.<k>.to_k_ip/to_v_ip.weight`` per cross-attention processor ``k`` (1, 3, 5, ...), and
    with ``lora_rank`` FaceID's LoRA on every attention processor."""
    tensors = {}
    modules = dict(unet.named_modules())
    cross = 0
    for index, name in enumerate(unet.attn_processors):
        attention = modules[name.removesuffix(".processor")]
        if name.endswith("attn2.processor"):
            # diffusers numbers the cross-attention processors 1, 3, 5, ... (self-attention between them).
            key = 2 * cross + 1
            cross += 1
            hidden = attention.to_k.out_features
            tensors[f"ip_adapter.{key}.to_k_ip.weight"] = random(hidden, width)
            tensors[f"ip_adapter.{key}.to_v_ip.weight"] = random(hidden, width)
        if lora_rank:
            layers = {"to_q": attention.to_q, "to_k": attention.to_k, "to_v": attention.to_v}
            layers["to_out"] = attention.to_out[0]
            for part, layer in layers.items():
                prefix = f"ip_adapter.{index}.{part}_lora"
                tensors[f"{prefix}.down.weight"] = random(lora_rank, layer.in_features)
                tensors[f"{prefix}.up.weight"] = random(layer.out_features, lora_rank)
    return tensors


def _save(tensors: dict, out_path: Path) -> Path:
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(out_path))
    return out_path


def write_faceid_adapter(unet, out_path: Path, *, seed: int, lora_rank: int = 0, scale: float = 0.3) -> Path:
    """Write a random IP-Adapter FaceID for ``unet`` in the layout diffusers' ``load_ip_adapter`` reads.

    ``image_proj.*``: the FaceID projection (``proj.0``: 512 -> 512, GELU, ``proj.2``: 512 -> 4 tokens of
    the UNet's cross-attention width, ``norm``: LayerNorm). ``ip_adapter.<k>.to_k_ip/to_v_ip.weight`` for
    the ``k``-th attention processor of the UNet (cross-attentions only: 1, 3, 5, ...). ``lora_rank`` > 0
    adds FaceID's LoRA (``<k>.to_{q,k,v,out}_lora.{down,up}.weight`` on every attention processor).
    """
    random = _random(seed, scale)
    width = int(unet.config.cross_attention_dim)
    size = FACEID_EMBEDDING_SIZE
    tensors = {
        "image_proj.proj.0.weight": random(size, size, std=size**-0.5),
        "image_proj.proj.0.bias": random(size, std=0.1),
        "image_proj.proj.2.weight": random(width * FACEID_TOKENS, size, std=size**-0.5),
        "image_proj.proj.2.bias": random(width * FACEID_TOKENS, std=0.1),
        "image_proj.norm.weight": 1.0 + random(width, std=0.1),
        "image_proj.norm.bias": random(width, std=0.1),
    }
    tensors.update(_attention_weights(unet, random, width=width, lora_rank=lora_rank))
    return _save(tensors, out_path)


def write_composition_adapter(
    unet, out_path: Path, *, seed: int, encoder_width: int = ENCODER_WIDTH, scale: float = 0.3
) -> Path:
    """Write a random IP Composition Adapter (IP-Adapter Plus) for ``unet`` and an encoder of ``encoder_width``."""
    random = _random(seed, scale)
    width = int(unet.config.cross_attention_dim)
    dim, inner, ff = COMPOSITION_WIDTH, COMPOSITION_WIDTH, 4 * COMPOSITION_WIDTH
    tensors = {
        "image_proj.latents": random(1, COMPOSITION_QUERIES, dim, std=dim**-0.5),
        "image_proj.proj_in.weight": random(dim, encoder_width, std=encoder_width**-0.5),
        "image_proj.proj_in.bias": random(dim, std=0.1),
        "image_proj.proj_out.weight": random(width, dim, std=dim**-0.5),
        "image_proj.proj_out.bias": random(width, std=0.1),
        "image_proj.norm_out.weight": 1.0 + random(width, std=0.1),
        "image_proj.norm_out.bias": random(width, std=0.1),
    }
    for layer in range(COMPOSITION_DEPTH):
        prefix = f"image_proj.layers.{layer}"
        for norm in ("norm1", "norm2"):
            tensors[f"{prefix}.0.{norm}.weight"] = 1.0 + random(dim, std=0.1)
            tensors[f"{prefix}.0.{norm}.bias"] = random(dim, std=0.1)
        tensors[f"{prefix}.0.to_q.weight"] = random(inner, dim, std=dim**-0.5)
        tensors[f"{prefix}.0.to_kv.weight"] = random(2 * inner, dim, std=dim**-0.5)
        tensors[f"{prefix}.0.to_out.weight"] = random(dim, inner, std=inner**-0.5)
        tensors[f"{prefix}.1.0.weight"] = 1.0 + random(dim, std=0.1)
        tensors[f"{prefix}.1.0.bias"] = random(dim, std=0.1)
        tensors[f"{prefix}.1.1.weight"] = random(ff, dim, std=dim**-0.5)
        tensors[f"{prefix}.1.3.weight"] = random(dim, ff, std=ff**-0.5)
    tensors.update(_attention_weights(unet, random, width=width))
    return _save(tensors, out_path)


def write_image_encoder(directory: Path, *, seed: int) -> Path:
    """A tiny CLIP vision model (32-d, 2 layers, 32-pixel images in 8-pixel patches) saved as transformers does."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=ENCODER_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
