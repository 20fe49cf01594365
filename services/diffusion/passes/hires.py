"""The ``hires`` pass (hires fix): upscale in pixel space, then img2img with the base prompt and model.

The image is resized with Lanczos to ``spec.scale`` (default 2) times its size, or to
``spec.width`` x ``spec.height`` when set, capped at the worker's maximum side and rounded down to
multiples of 8. It is then re-diffused with the img2img pipeline of the pass's component set (built
with ``from_pipe`` on the loaded model) at ``spec.denoising_strength`` (default 0.4, the gateway's
``--hires_denoising_strength``). When the upscaled image's long side exceeds what the model handles
comfortably (twice its working size: 1024 for SD1.5, 2048 for SDXL), or when ``spec.tiled`` is set, it
is re-diffused in overlapping tiles of that size, blended with feathered weights
(:mod:`~multipass_diffusion.imaging.tiling`); every tile uses the pass's seed and prompt.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import SIZE_MULTIPLE
from multipass_diffusion.imaging.tiling import Blender, default_margin, tile_grid, tile_weight
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.progress import PartMonitor
from multipass_diffusion.passes.sampling import generate, strength_of
from multipass_diffusion.passes.validation import (
    MAX_SIDE,
    check_common,
    check_scale,
    check_strength,
    needs_image,
)
from multipass_diffusion.spec_options import option_int

DEFAULT_SCALE = 2.0
MAX_SCALE = 4.0
DEFAULT_STRENGTH = 0.4
#: Long sides above this multiple of the working size are re-diffused in tiles of that size.
COMFORTABLE_FACTOR = 2
#: Smallest tile options["hires_tile"] may ask for (its quarter is the overlap, a multiple of 8).
MIN_TILE = 64


def _down_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def hires_size(size: tuple[int, int], scale: float, cap: int = MAX_SIDE) -> tuple[int, int]:
    """``size`` x ``scale``, shrunk (same aspect) so the long side is at most ``cap``, multiples of 8."""
    width, height = size[0] * scale, size[1] * scale
    shrink = min(1.0, cap / max(width, height))
    return _down_to_multiple(math.floor(width * shrink)), _down_to_multiple(math.floor(height * shrink))


def comfortable_side(working_size: int) -> int:
    return _down_to_multiple(working_size * COMFORTABLE_FACTOR)


class HiresPass(PassHandler):
    kind = "hires"
    code_version = FINISHING_VERSION
    #: The base pass's ``<faceid:ID:W>`` (the planner sends the base tags) keeps its identity here too.
    uses_faceid = True

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        check_common(spec)
        needs_image(inputs, self.kind)
        check_scale(spec, low=1.0, high=MAX_SCALE)
        if spec.denoising_strength:
            check_strength(spec.denoising_strength)
        tile = option_int(spec, "hires_tile", 0, low=0, high=MAX_SIDE)
        if tile and (tile % SIZE_MULTIPLE or tile < MIN_TILE):
            raise InvalidInput.of(
                [
                    Violation(
                        "spec.options[hires_tile]",
                        f"got {tile}; expected a multiple of {SIZE_MULTIPLE} of at least {MIN_TILE}",
                    )
                ]
            )

    def run(self, ctx: PassContext) -> Image.Image:
        spec = ctx.spec
        image = ctx.inputs.image.convert("RGB")
        if spec.width and spec.height:
            target = hires_size((spec.width, spec.height), 1.0)
        else:
            target = hires_size(image.size, spec.scale or DEFAULT_SCALE)
        upscaled = image.resize(target, Image.Resampling.LANCZOS)
        strength = strength_of(spec, DEFAULT_STRENGTH)
        if strength <= 0:  # --hires_denoising_strength 0: the upscale alone
            ctx.metadata.update(hires_size=f"{target[0]}x{target[1]}", strength="0", tiled="no")
            return upscaled
        tile = option_int(spec, "hires_tile", 0, low=0, high=MAX_SIDE) or comfortable_side(ctx.working_size)
        tiled = spec.tiled or max(target) > tile
        ctx.metadata.update(
            hires_size=f"{target[0]}x{target[1]}", strength=f"{strength:g}", tiled="yes" if tiled else "no"
        )
        if not tiled:
            return generate(ctx, "img2img", size=target, image=upscaled, strength=strength)
        overlap = _down_to_multiple(tile / 4)
        tiles = tile_grid(target[0], target[1], tile, overlap)
        ctx.metadata["tiles"] = str(len(tiles))
        blender = Blender(*target)
        margin = default_margin(overlap)
        for index, part in enumerate(tiles):
            part_ctx = dataclasses.replace(ctx, monitor=PartMonitor(ctx.monitor, index, len(tiles)))
            piece = upscaled.crop((part.x0, part.y0, part.x1, part.y1))
            result = generate(part_ctx, "img2img", size=piece.size, image=piece, strength=strength)
            blender.add(part, np.asarray(result), tile_weight(part, target[0], target[1], overlap, margin))
        return Image.fromarray(np.clip(np.rint(blender.result()), 0, 255).astype(np.uint8))
