"""Random-weight SD1.5 and SDXL pipelines at their real sizes, from the configs the worker ships.

``write_random_pipeline(family, target, dtype)`` writes a diffusers-format pipeline whose UNet, VAE and
text encoders have the real architectures (``multipass_diffusion.single_file.SHIPPED_CONFIGS``) and
random weights, so the production loading code can be run at full size without any download. The
modules are built on the meta device and filled in ``dtype`` (no 2.6 G-parameter initialisation in
float32): normalisation weights 1, biases 0, other weights N(0, 0.02).
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("sd15", "sdxl")


def _fill(module, dtype, generator) -> None:
    import torch

    module.to_empty(device="cpu")
    module.to(dtype)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * 0.02)
        for name, buffer in module.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))


def write_random_pipeline(family: str, target: Path, *, dtype, seed: int = 0) -> Path:
    """Write a random full-size ``family`` pipeline in diffusers format to ``target`` (returned)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from multipass_diffusion import single_file

    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    configs = single_file.SHIPPED_CONFIGS / family
    target = Path(target)
    generator = torch.Generator().manual_seed(seed)

    def save(name: str, build) -> None:
        with torch.device("meta"):
            module = build()
        _fill(module, dtype, generator)
        module.save_pretrained(target / name, safe_serialization=True)
        del module

    save(
        "unet",
        lambda: UNet2DConditionModel.from_config(json.loads((configs / "unet/config.json").read_text())),
    )
    save("vae", lambda: AutoencoderKL.from_config(json.loads((configs / "vae/config.json").read_text())))
    save("text_encoder", lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder")))
    if family == "sdxl":
        save(
            "text_encoder_2",
            lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(configs / "text_encoder_2")),
        )
    for name, tokenizer in single_file.tokenizers(configs).items():
        tokenizer.save_pretrained(target / name)
    scheduler = configs / "scheduler" / "scheduler_config.json"
    (target / "scheduler").mkdir(parents=True, exist_ok=True)
    (target / "scheduler" / "scheduler_config.json").write_text(scheduler.read_text())
    (target / "model_index.json").write_text((configs / "model_index.json").read_text())
    return target
