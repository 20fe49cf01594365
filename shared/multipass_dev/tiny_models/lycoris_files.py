"""Random LyCORIS and DoRA tune files for a diffusers model, in the tensor layouts their trainers write.

``write_lycoris(model_dir, path, algorithm=...)`` writes, for the attention projections of the UNet and
the text encoder(s) of the diffusers model at ``model_dir`` (kohya module names, ``lora_unet_*`` and
``lora_te*``), one of:

- ``"locon"``: a kohya LoRA (``lora_down``/``lora_up`` + ``alpha``) that also adapts every ResNet
  convolution of the UNet with 4-D ``lora_down`` (rank x in x 3 x 3) and ``lora_up`` (out x rank x 1 x 1);
- ``"loha"``: LoHa's ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` + ``alpha``;
- ``"lokr"``: LoKr's ``lokr_w1`` and ``lokr_w2`` (Kronecker factors);
- ``"dora"``: a kohya LoRA with DoRA's ``dora_scale`` magnitude vectors.

Values are random and non-zero, so an adapter that loads changes the model's output.
"""

from __future__ import annotations

from pathlib import Path

from multipass_dev.tiny_models.diffusion import _lora_targets

ALGORITHMS = ("locon", "loha", "lokr", "dora")


def _kohya_name(prefix: str, module: str, sdxl: bool) -> str:
    kohya = {
        "unet": "lora_unet",
        "text_encoder": "lora_te1" if sdxl else "lora_te",
        "text_encoder_2": "lora_te2",
    }
    return f"{kohya[prefix]}_{module.replace('.', '_')}"


def _conv_targets(unet_dir: Path) -> list[tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    targets = []
    with safe_open(str(unet_dir / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if key.endswith((".conv1.weight", ".conv2.weight")) and ".resnets." in key:
                targets.append((key[: -len(".weight")], tuple(handle.get_slice(key).get_shape())))
    return sorted(targets)


def write_lycoris(model_dir: Path, out_path: Path, *, algorithm: str, seed: int, rank: int = 4) -> Path:
    """Write a random ``algorithm`` tune (:data:`ALGORITHMS`) for the diffusers model at ``model_dir``."""
    import torch
    from safetensors.torch import save_file

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    model_dir = Path(model_dir)
    sdxl = (model_dir / "text_encoder_2").is_dir()
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.3

    tensors: dict[str, torch.Tensor] = {}
    prefixes = ["unet", "text_encoder"] + (["text_encoder_2"] if sdxl else [])
    for prefix in prefixes:
        for module, (out_features, in_features) in _lora_targets(prefix, model_dir / prefix):
            key = _kohya_name(prefix, module, sdxl)
            if algorithm in ("locon", "dora"):
                tensors[f"{key}.lora_down.weight"] = random(rank, in_features)
                tensors[f"{key}.lora_up.weight"] = random(out_features, rank)
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
                if algorithm == "dora":
                    tensors[f"{key}.dora_scale"] = torch.rand(out_features, 1, generator=generator) + 0.5
            elif algorithm == "loha":
                for name, shape in (
                    ("hada_w1_a", (out_features, rank)),
                    ("hada_w1_b", (rank, in_features)),
                    ("hada_w2_a", (out_features, rank)),
                    ("hada_w2_b", (rank, in_features)),
                ):
                    tensors[f"{key}.{name}"] = random(*shape)
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
            else:
                factor = 2 if out_features % 2 == 0 and in_features % 2 == 0 else 1
                tensors[f"{key}.lokr_w1"] = random(factor, factor)
                tensors[f"{key}.lokr_w2"] = random(out_features // factor, in_features // factor)
    if algorithm == "locon":
        for module, (out_channels, in_channels, kh, kw) in _conv_targets(model_dir / "unet"):
            key = _kohya_name("unet", module, sdxl)
            tensors[f"{key}.lora_down.weight"] = random(rank, in_channels, kh, kw)
            tensors[f"{key}.lora_up.weight"] = random(out_channels, rank, 1, 1)
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_path))
    return out_path
