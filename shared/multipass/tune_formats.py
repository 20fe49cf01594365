"""What format a tune file is in, from its safetensors tensor names: one answer for the gateway and the worker.

Tunes come from kohya-ss, diffusers/PEFT, ComfyUI, LyCORIS and A1111/civitai checkpoints. The worker loads
LoRAs with diffusers, which reads kohya LoRAs (LoCon too: the same ``lora_down``/``lora_up`` names on
convolutions) and diffusers/PEFT LoRAs, ComfyUI's own LoRA files once renamed to kohya's names (the worker
does it), and checkpoints in the original (LDM) or diffusers layout. Other
LyCORIS algorithms have their own tensors, which diffusers cannot apply: such a file is refused when it is
registered, naming its format and the tensors that tell it, instead of failing on its first pass.

Pure: tensor names in, a :class:`TuneFormat` out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LORA = "lora"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class TuneFormat:
    """A tune file's format: its ``kind`` (lora/checkpoint), a readable ``name``, and why it cannot load."""

    kind: str
    name: str
    #: Empty when the worker loads this format; else the reason, for the field violation.
    unsupported: str = ""

    @property
    def supported(self) -> bool:
        return not self.unsupported


#: (tensor-name marker, format name, why it is refused): LyCORIS algorithms diffusers does not apply.
_UNSUPPORTED = (
    (".hada_w1_a", "LyCORIS LoHa", "diffusers applies no Hadamard-product (LoHa) weights"),
    (".lokr_w1", "LyCORIS LoKr", "diffusers applies no Kronecker-product (LoKr) weights"),
    (".oft_blocks", "LyCORIS OFT", "diffusers applies no orthogonal fine-tuning (OFT) blocks"),
    (".oft_diag", "LyCORIS OFT", "diffusers applies no orthogonal fine-tuning (OFT) blocks"),
    (".on_input", "LyCORIS (IA)^3", "diffusers applies no (IA)^3 scaling vectors"),
    (".b1.weight", "LyCORIS GLoRA", "diffusers applies no GLoRA weights"),
    (".diff", "LyCORIS full (weight difference)", "diffusers applies no stored weight differences"),
    (".dora_scale", "DoRA", "diffusers drops DoRA's magnitude vectors, which would change the tune's output"),
)


#: The only tensors of a textual-inversion embedding: A1111's (``emb_params``), SDXL's pair, and the older
#: ``string_to_param`` layout saved as safetensors.
_EMBEDDING_TENSORS = frozenset({"emb_params", "clip_l", "clip_g", "string_to_param.*"})

#: Tensor names of diffusers' LoRA formats: PEFT's, and the older attention-processor ones.
_DIFFUSERS_LORA_MARKERS = ("lora_A", "lora_B", ".lora.down", ".lora.up", "lora_linear_layer", "_lora.down")


def classify(names: Iterable[str], shapes: dict[str, list[int]] | None = None) -> TuneFormat | None:
    """The format of a safetensors file whose tensors are ``names`` (None when no known format fits).

    ``shapes`` (optional, by name) tells a LoCon from a plain kohya LoRA: convolution ``lora_down``
    weights have four dimensions.
    """
    names = [name for name in names if name != "__metadata__"]
    if names and set(names) <= _EMBEDDING_TENSORS:
        return TuneFormat(
            "embedding",
            "textual-inversion embedding",
            f"is a textual-inversion embedding (tensors {', '.join(sorted(names))}), not a LoRA or a "
            "checkpoint: embeddings are not tunes; a LoRA or a checkpoint of the subject is",
        )
    for marker, format_name, reason in _UNSUPPORTED:
        found = next((name for name in names if name.endswith(marker)), None)
        if found is not None:
            return TuneFormat(
                LORA,
                format_name,
                f"{format_name} ({marker.lstrip('.')} keys, e.g. {found}) is not supported: {reason}",
            )
    if any(name.startswith(("model.diffusion_model.", "conditioner.embedders.")) for name in names):
        return TuneFormat(CHECKPOINT, "single-file checkpoint (A1111/LDM layout)")
    if any(name.startswith("unet.") for name in names) and not any("lora" in name for name in names):
        return TuneFormat(CHECKPOINT, "checkpoint (diffusers layout)")
    comfy = bool(names) and all(name.startswith(("diffusion_model.", "text_encoders.")) for name in names)
    if comfy and any("lora" in name for name in names):
        return TuneFormat(LORA, "ComfyUI LoRA")
    if any(name.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for name in names):
        conv = shapes is not None and any(
            name.endswith("lora_down.weight") and len(shapes.get(name, ())) == 4 for name in names
        )
        return TuneFormat(LORA, "LyCORIS LoCon (kohya layout)" if conv else "kohya LoRA")
    if any(marker in name for name in names for marker in _DIFFUSERS_LORA_MARKERS):
        return TuneFormat(LORA, "diffusers/PEFT LoRA")
    return None


#: Cross-attention widths of the published models of each family (a tiny test model has its own).
CROSS_ATTENTION_WIDTHS = {"sd15": 768, "sdxl": 2048}
_SECOND_TEXT_ENCODER = ("lora_te2_", "text_encoder_2.", "text_encoders.clip_g.", "conditioner.embedders.1.")
_CROSS_ATTENTION_KEY = ("attn2.to_k", "attn2_to_k")
#: Ends of the tensors whose second dimension is a projection's input width (a LoRA's down weights, a
#: checkpoint's own weight).
_INPUT_SIDE = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "down.weight", "to_k.weight")


def family_mismatch(shapes: dict[str, list[int]], family: str) -> str | None:
    """Why a tune whose tensors have ``shapes`` cannot be of ``family`` ("sd15"/"sdxl"); None when it can.

    A second text encoder's tensors make an SDXL tune; a cross-attention key projection whose input width
    is a published family's (768 for SD1.5, 2048 for SDXL) tells that family. Other widths (a test's tiny
    models) tell nothing here; the worker checks them against its model.
    """
    second = next((name for name in shapes if name.startswith(_SECOND_TEXT_ENCODER)), None)
    if second is not None and family != "sdxl":
        return f"it has a second text encoder's tensors (e.g. {second[:120]}), which only SDXL has"
    widths = {
        shape[1]
        for name, shape in shapes.items()
        if len(shape) == 2 and name.endswith(_INPUT_SIDE) and any(key in name for key in _CROSS_ATTENTION_KEY)
    }
    told = {fam for fam, width in CROSS_ATTENTION_WIDTHS.items() if width in widths}
    if told and family not in told:
        width = CROSS_ATTENTION_WIDTHS[next(iter(told))]
        return (
            f"its cross-attention projections take {width}-wide inputs, as {'/'.join(sorted(told))} models do"
        )
    return None
