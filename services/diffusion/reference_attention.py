"""``controlnet=reference``: reference-only control, the picture's look carried by self-attention, no weights.

The technique of ControlNet's "reference_only" preprocessor (A1111's extension, ComfyUI's reference nodes):
at every denoising step the UNet first runs on the reference image's latents, noised to the same timestep,
while each self-attention layer records its input; the real step then lets every self-attention attend to
its own tokens *and* the recorded reference tokens. Whatever the prompt asks for is drawn with the
reference's colours, textures and subject at hand, without a ControlNet model, for every model family.

:func:`attached` installs it on a pipeline for one call and restores the pipeline after (also on error):

- the self-attention processors (``attn1``) are wrapped by :class:`ReferenceAttnProcessor`, which records
  in ``write`` mode and attends to ``[own tokens, reference tokens]`` in ``read`` mode; the output is
  mixed with the plain attention by ``scale`` (``controlnet_conditioning_scale``: 1 = full reference,
  0.5 = halfway); cross-attention processors (FaceID's included) are left as they are;
- a forward pre-hook on the UNet runs the recording pass before each real call, with the same timestep
  and conditioning (text, SDXL's added conditions, FaceID's image embeddings), no ControlNet residuals,
  and the reference latents noised with a fixed noise drawn from the pass's seed, so runs repeat exactly.
  An inpainting UNet (9 channels) gets the real call's mask and masked-image channels after the reference
  latents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

KIND = "reference"
CAPABILITY = f"controlnet:{KIND}"
#: UNet call arguments the recording pass must not get (a ControlNet's residuals belong to the real call).
_RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


@dataclass
class _Bank:
    """What the recording pass left for the real one, per self-attention layer."""

    scale: float
    mode: str = "off"  # "write" while recording, "read" during the real call
    states: dict[str, torch.Tensor] = field(default_factory=dict)


class ReferenceAttnProcessor:
    """Wraps one self-attention processor: records its input, or attends to it as extra context."""

    def __init__(self, inner, name: str, bank: _Bank):
        self.inner = inner
        self.name = name
        self.bank = bank

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        import torch

        bank = self.bank
        if encoder_hidden_states is None and bank.mode == "write":
            bank.states[self.name] = hidden_states.detach()
        elif encoder_hidden_states is None and bank.mode == "read" and self.name in bank.states:
            reference = bank.states[self.name]
            context = torch.cat([hidden_states, reference.to(hidden_states.dtype)], dim=1)
            attended = self.inner(attn, hidden_states, context, attention_mask, temb, *args, **kwargs)
            if bank.scale >= 1.0:
                return attended
            plain = self.inner(attn, hidden_states, None, attention_mask, temb, *args, **kwargs)
            return plain + bank.scale * (attended - plain)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def reference_latents(pipe, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """The reference image at ``size`` (width, height) in the pipeline's latent space."""
    import torch

    width, height = size
    vae = pipe.vae
    dtype = vae.dtype
    # SDXL's VAE overflows in fp16: encode in fp32, as the diffusers pipelines do (config.force_upcast).
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    pixels = pixels.to(device=vae.device, dtype=torch.float32 if upcast else dtype)
    try:
        if upcast:
            vae.to(dtype=torch.float32)
        with torch.inference_mode():
            latents = vae.encode(pixels).latent_dist.mean
    finally:
        if upcast:
            vae.to(dtype=dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(dtype)


@contextlib.contextmanager
def attached(
    pipe, image: Image.Image, size: tuple[int, int], *, scale: float, seeds: Sequence[int]
) -> Iterator[None]:
    """Reference-only attention on ``pipe`` for the calls made inside the block, one image per seed (each
    image's reference noise comes from its own seed, so a batch repeats what each seed gives alone)."""
    import torch

    unet = pipe.unet
    latents = reference_latents(pipe, image, size)
    noise = torch.cat(
        [
            torch.randn(
                latents.shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32
            )
            for seed in seeds
        ]
    ).to(device=latents.device, dtype=latents.dtype)
    bank = _Bank(scale=max(0.0, float(scale)))
    original = dict(unet.attn_processors)
    unet.set_attn_processor(
        {
            name: ReferenceAttnProcessor(processor, name, bank)
            if name.endswith("attn1.processor")
            else processor
            for name, processor in original.items()
        }
    )

    def record(module, args, kwargs):
        if bank.mode == "write":
            return None
        call = dict(kwargs)
        sample = args[0] if args else call.pop("sample")
        timestep = args[1] if len(args) > 1 else call.pop("timestep")
        rest = args[2:]
        batch = sample.shape[0]
        steps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        steps = steps.expand(batch) if steps.numel() == 1 else steps
        scheduler = pipe.scheduler
        # The real call's batch is the images, or [unconditional images, conditional images] with CFG.
        noised = scheduler.add_noise(
            latents.expand(batch, -1, -1, -1),
            noise.repeat(batch // noise.shape[0], 1, 1, 1),
            steps.to(latents.device),
        )
        reference = scheduler.scale_model_input(noised, timestep).to(sample.dtype)
        if sample.shape[1] > reference.shape[1]:  # an inpainting UNet: the real call's mask channels
            reference = torch.cat([reference, sample[:, reference.shape[1] :]], dim=1)
        for name in _RESIDUALS:
            call.pop(name, None)
        bank.states.clear()
        bank.mode = "write"
        try:
            module.forward(reference, timestep, *rest, **call)
        finally:
            bank.mode = "read"
        return None

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        bank.states.clear()
        unet.set_attn_processor(original)
