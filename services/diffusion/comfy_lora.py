"""ComfyUI-format LoRAs (``diffusion_model.*`` / ``text_encoders.*`` tensor names) renamed to kohya's names.

ComfyUI's own LoRA files (its "Save LoRA" and training nodes) name each module by its path in the original
(LDM) model: ``diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.lora_down.weight`` for the
UNet, ``text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight`` for
a text encoder, with ``lora_down``/``lora_up`` or PEFT's ``lora_A``/``lora_B`` and an optional ``alpha``.
diffusers reads none of these names, but reads kohya's, which are the same LDM paths with underscores
(``lora_unet_input_blocks_4_1_...``, ``lora_te_text_model_...``): :func:`to_kohya` renames one into the
other, and diffusers then maps the blocks onto the model's own layout as it does for a kohya file.

Pure: a state dict in, a state dict out (the same tensors).
"""

from __future__ import annotations

from collections.abc import Mapping

UNET_PREFIX = "diffusion_model."
TEXT_PREFIX = "text_encoders."
#: ComfyUI's text encoder names → kohya's prefix (SD1.5 has one encoder, SDXL clip_l and clip_g).
_SINGLE_ENCODER = {"clip_l": "lora_te_"}
_TWO_ENCODERS = {"clip_l": "lora_te1_", "clip_g": "lora_te2_"}
#: Weight names of a module's LoRA tensors: ComfyUI's (and PEFT's) → kohya's.
_LEAVES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "lora_mid.weight": "lora_mid.weight",
    "alpha": "alpha",
}


def is_comfy(names: list[str] | Mapping) -> bool:
    """Whether tensor ``names`` are ComfyUI-format LoRA names (every one, so a mixed file is not)."""
    names = [name for name in names if name != "__metadata__"]
    return bool(names) and all(name.startswith((UNET_PREFIX, TEXT_PREFIX)) for name in names)


def to_kohya(state: Mapping) -> dict:
    """``state`` with kohya's tensor names; KeyError naming a tensor that is no LoRA weight or encoder."""
    encoders = (
        _TWO_ENCODERS if any(key.startswith(f"{TEXT_PREFIX}clip_g.") for key in state) else _SINGLE_ENCODER
    )
    renamed = {}
    for key, tensor in state.items():
        module, leaf = _split(key)
        if key.startswith(UNET_PREFIX):
            prefix, path = "lora_unet_", module[len(UNET_PREFIX) :]
        else:
            encoder, _, path = module[len(TEXT_PREFIX) :].partition(".")
            if encoder not in encoders:
                raise KeyError(f"{key}: text encoder {encoder!r} is none of {', '.join(encoders)}")
            prefix = encoders[encoder]
            path = path.removeprefix("transformer.")
        renamed[f"{prefix}{path.replace('.', '_')}.{_LEAVES[leaf]}"] = tensor
    return renamed


def _split(key: str) -> tuple[str, str]:
    """(module path, LoRA weight name) of a tensor name; KeyError when it is no LoRA weight."""
    for leaf in _LEAVES:
        if key.endswith(f".{leaf}"):
            return key[: -len(leaf) - 1], leaf
    raise KeyError(
        f"{key}: not a LoRA weight (expected .lora_down/.lora_up/.lora_A/.lora_B weights or .alpha)"
    )
