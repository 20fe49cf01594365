"""The ``upscale`` pass (super_resolution): the worker's super-resolution model, optionally tiled.

The model (:mod:`multipass_diffusion.nets.upscalers`) is a published x2/x4 network whose architecture
spandrel reads from its weights file (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ...) or diffusers' x4
upscaler. ``spec.tiled`` (``--tiled_upscale``) runs it on overlapping tiles of at most
``options["upscale_tile"]`` pixels a side, blended with feathered weights
(:mod:`~multipass_diffusion.imaging.tiling`); images larger than :data:`UNTILED_MAX_SIDE` are tiled
even without it. The result is resized (Lanczos) to ``spec.scale`` x the input when that differs from
the model's own factor, and capped at the worker's maximum side.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.tiling import Blender, default_margin, tile_grid, tile_weight
from multipass_diffusion.nets import components
from multipass_diffusion.nets.upscalers import load_upscaler
from multipass_diffusion.passes.context import PassContext, PassInputs, StepMonitor
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.progress import PartMonitor, part_done
from multipass_diffusion.passes.validation import MAX_SIDE, check_scale, needs_image
from multipass_diffusion.spec_options import option_int

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
#: Inputs with a longer side are tiled even without spec.tiled (bounds memory on any input).
UNTILED_MAX_SIDE = 1024
MAX_SCALE = 8.0


def upscale_array(
    run: Callable[[np.ndarray, object], np.ndarray],
    array: np.ndarray,
    scale: int,
    *,
    monitor: StepMonitor,
    tiled: bool,
    tile: int,
    overlap: int,
    reports_steps: bool = False,
) -> np.ndarray:
    """Run ``run(tile_array, part_monitor)`` (an x``scale`` model) on the whole image or on blended tiles.

    Unless ``reports_steps`` (the model reports its own steps through the part monitor), each call counts
    as one step of the pass's progress.
    """
    height, width = array.shape[:2]
    if not tiled:
        result = run(array, PartMonitor(monitor, 0, 1))
        if not reports_steps:
            part_done(monitor, 0, 1)
        return result
    tiles = tile_grid(width, height, tile, overlap)
    blender = Blender(width * scale, height * scale)
    margin = default_margin(overlap)
    for index, part in enumerate(tiles):
        monitor.check()
        result = run(array[part.y0 : part.y1, part.x0 : part.x1], PartMonitor(monitor, index, len(tiles)))
        big = part.scaled(scale)
        blender.add(
            big, result, tile_weight(big, width * scale, height * scale, overlap * scale, margin * scale)
        )
        if not reports_steps:
            part_done(monitor, index, len(tiles))
    return blender.result()


def target_size(size: tuple[int, int], scale: float, cap: int = MAX_SIDE) -> tuple[tuple[int, int], bool]:
    """(width, height) for ``size`` x ``scale``, shrunk to fit ``cap``; and whether the cap applied."""
    width, height = (max(1, math.floor(side * scale + 0.5)) for side in size)
    longest = max(width, height)
    if longest <= cap:
        return (width, height), False
    shrink = cap / longest
    return (max(1, math.floor(width * shrink)), max(1, math.floor(height * shrink))), True


class UpscalePass(PassHandler):
    kind = "upscale"
    code_version = FINISHING_VERSION
    component = components.UPSCALER

    def __init__(self):
        self._models = components.LoadedModels()

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        needs_image(inputs, self.kind)
        check_scale(spec, low=1.0, high=MAX_SCALE)
        tile = option_int(spec, "upscale_tile", DEFAULT_TILE, low=32, high=4096)
        overlap = option_int(spec, "upscale_tile_overlap", DEFAULT_OVERLAP, low=0, high=1024)
        if overlap * 2 > tile:
            raise InvalidInput.of(
                [
                    Violation(
                        "spec.options[upscale_tile_overlap]", f"got {overlap}; expected at most {tile // 2}"
                    )
                ]
            )

    def run(self, ctx: PassContext) -> Image.Image:
        spec = ctx.spec
        runtime = ctx.runtime
        image = ctx.inputs.image.convert("RGB")
        key = (str(runtime.model_dir), runtime.device, str(runtime.dtype))
        fingerprint = components.fingerprint(runtime.model_dir, components.UPSCALER)
        upscaler = self._models.get(
            key + (fingerprint,),
            lambda: load_upscaler(runtime.model_dir, device=runtime.device, dtype=runtime.dtype),
        )
        tile = option_int(spec, "upscale_tile", DEFAULT_TILE, low=32, high=4096)
        overlap = option_int(spec, "upscale_tile_overlap", DEFAULT_OVERLAP, low=0, high=1024)
        tiled = spec.tiled or max(image.size) > UNTILED_MAX_SIDE
        result = upscale_array(
            lambda array, monitor: upscaler.run(array, spec, monitor),
            np.asarray(image),
            upscaler.scale,
            monitor=ctx.monitor,
            tiled=tiled,
            tile=tile,
            overlap=overlap,
            reports_steps=upscaler.reports_steps,
        )
        upscaled = Image.fromarray(np.clip(np.rint(result), 0, 255).astype(np.uint8))
        size, capped = target_size(image.size, spec.scale or upscaler.scale)
        if capped:
            ctx.warn(f"the upscaled image was capped at {MAX_SIDE} pixels a side ({size[0]}x{size[1]})")
        if upscaled.size != size:
            upscaled = upscaled.resize(size, Image.Resampling.LANCZOS)
        ctx.metadata.update(
            upscaler=type(upscaler).__name__,
            upscaler_architecture=upscaler.architecture,
            model_scale=str(upscaler.scale),
            tiled="yes" if tiled else "no",
            output_size=f"{size[0]}x{size[1]}",
        )
        if tiled:
            ctx.metadata["tiles"] = str(len(tile_grid(image.width, image.height, tile, overlap)))
        return upscaled
