"""Per-device speed and memory settings of a loaded component set.

- CUDA: UNets in ``channels_last`` memory format (faster convolutions on tensor cores); attention already
  uses PyTorch's scaled-dot-product kernels (diffusers' default processor on torch 2).
- Any device: the VAE decodes and encodes in tiles when an image has more pixels than
  ``vae_tile_above_pixels`` (bounded memory for hires and large scenes), and whole otherwise, so small
  images keep their exact untiled result.
- Optionally (``MULTIPASS_DIFFUSION_COMPILE``): the base UNets compiled with ``torch.compile``, in place
  (``Module.compile``), so every pipeline that shares the module object runs the compiled forward; LoRAs
  then reach them by hot-swap (:mod:`multipass_diffusion.lora_hotswap`).
"""

from __future__ import annotations

#: Images above this many pixels go through the VAE in tiles (1536 x 1536 by default).
DEFAULT_VAE_TILE_ABOVE_PIXELS = 1536 * 1536


def tune_unets(unets, device: str) -> None:
    """Put the UNets in the memory format that is fastest on ``device``."""
    if not device.startswith("cuda"):
        return
    import torch

    for unet in unets:
        if unet is not None:
            unet.to(memory_format=torch.channels_last)


def vae_tiling_for(vae, size: tuple[int, int], tile_above_pixels: int) -> bool:
    """Enable VAE tiling for an image of ``size`` above the threshold, disable it below; returns whether on."""
    width, height = size
    tiled = tile_above_pixels > 0 and width * height > tile_above_pixels
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tiled


def compile_unets(unets, *, mode: str = "", backend: str = "inductor") -> None:
    """Compile ``unets`` in place (call after :func:`multipass_diffusion.lora_hotswap.prepare_slot`).

    Compilation itself happens on the first forward of each new input shape (the first pass at a size).
    """
    for unet in unets:
        if unet is not None:
            unet.compile(mode=mode or None, backend=backend, fullgraph=False)
