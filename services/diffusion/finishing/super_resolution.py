"""The ``upscale`` pass (super_resolution): x4 with an ESRGAN-class model or diffusers' x4 upscaler.

``<MODEL_DIR>/diffusion/upscaler/`` holds either ``config.json`` + ``model.safetensors`` of an
:class:`~multipass_diffusion.finishing.rrdbnet.RRDBNet`, or a ``StableDiffusionUpscalePipeline`` in
diffusers format (``model_index.json``). ``spec.tiled`` (``--tiled_upscale``) runs the model on
overlapping tiles of at most ``options["upscale_tile"]`` pixels a side, blended with feathered weights
(:mod:`~multipass_diffusion.finishing.tiling`); images larger than :data:`UNTILED_MAX_SIDE` are tiled
even without it. The result is resized (Lanczos) to ``spec.scale`` x the input when that differs from
the model's own factor, and capped at the worker's maximum side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.finishing import components
from multipass_diffusion.finishing.handler_hooks import FinishingHandler
from multipass_diffusion.finishing.options import check_scale, needs_image, option_int
from multipass_diffusion.finishing.progress import PartMonitor, StepCount, part_done
from multipass_diffusion.finishing.tiling import Blender, default_margin, tile_grid, tile_weight
from multipass_diffusion.passes.context import PassContext, PassInputs, StepMonitor
from multipass_diffusion.passes.validation import MAX_SIDE

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
#: Inputs with a longer side are tiled even without spec.tiled (bounds memory on any input).
UNTILED_MAX_SIDE = 1024
MAX_SCALE = 8.0
DEFAULT_DIFFUSION_STEPS = 20
DEFAULT_NOISE_LEVEL = 20


class EsrganUpscaler:
    """An RRDBNet loaded from ``config.json`` + ``model.safetensors``."""

    def __init__(self, directory: Path, *, device: str, dtype):
        import torch
        from safetensors.torch import load_file

        from multipass_diffusion.finishing.rrdbnet import RRDBConfig, RRDBNet

        config_values = components.read_config(directory)
        try:
            config = RRDBConfig.from_dict(config_values)
        except (TypeError, ValueError) as error:
            raise FailedPrecondition(f"{directory / components.CONFIG_FILE}: {error}") from error
        model = RRDBNet(config)
        weights = directory / components.WEIGHTS_FILE
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except (RuntimeError, OSError) as error:
            raise FailedPrecondition(
                f"{weights} does not fit the RRDBNet of its config.json: {error}"
            ) from error
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype
        self.scale = config.scale
        #: One model call per tile: the pass reports each tile as a step.
        self.reports_steps = False
        self._torch = torch

    def run(self, array: np.ndarray, spec: diffusion_pb2.PassSpec, monitor) -> np.ndarray:
        """uint8 H x W x 3 in, float32 (H*scale) x (W*scale) x 3 in 0..255 out."""
        torch = self._torch
        monitor.check()
        height, width = array.shape[:2]
        multiple = 4 // self.scale
        pad_y, pad_x = (-height) % multiple, (-width) % multiple
        if pad_x or pad_y:
            array = np.pad(array, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)[None]
        tensor = tensor.to(device=self.device, dtype=self.dtype) / 255.0
        with torch.inference_mode():
            output = self.model(tensor).clamp_(0.0, 1.0)
        result = output[0].permute(1, 2, 0).float().cpu().numpy() * 255.0
        return result[: height * self.scale, : width * self.scale]


class DiffusionUpscaler:
    """diffusers' ``StableDiffusionUpscalePipeline`` (text-guided x4), seeded and step-monitored."""

    scale = 4
    #: Denoising steps are reported through the part monitor's callback.
    reports_steps = True

    def __init__(self, directory: Path, *, device: str, dtype):
        from diffusers import StableDiffusionUpscalePipeline

        try:
            pipe = StableDiffusionUpscalePipeline.from_pretrained(
                directory, dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError) as error:
            raise FailedPrecondition(f"cannot load the diffusers upscaler at {directory}: {error}") from error
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)

    def run(self, array: np.ndarray, spec: diffusion_pb2.PassSpec, monitor) -> np.ndarray:
        import torch

        height, width = array.shape[:2]
        pad_y, pad_x = (-height) % 8, (-width) % 8
        if pad_x or pad_y:
            array = np.pad(array, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        noise_level = option_int(spec, "upscale_noise_level", DEFAULT_NOISE_LEVEL, low=0, high=350)
        steps = spec.steps or DEFAULT_DIFFUSION_STEPS
        monitor.check()
        # This pipeline only has the legacy per-step callback(step, timestep, latents).
        count = StepCount(steps)
        with torch.inference_mode():
            result = self.pipe(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt or None,
                image=Image.fromarray(array),
                num_inference_steps=steps,
                guidance_scale=spec.cfg_scale or 0.0,
                noise_level=noise_level,
                generator=torch.Generator("cpu").manual_seed(int(spec.seed)),
                output_type="np",
                callback=lambda step, timestep, latents: monitor.callback(count, step, timestep, {}),
                callback_steps=1,
            ).images[0]
        return np.asarray(result, dtype=np.float32)[: height * 4, : width * 4] * 255.0


def load_upscaler(model_dir: Path, *, device: str, dtype):
    directory = components.require(model_dir, components.UPSCALER, needed_by="the upscale pass")
    if components.is_diffusers_upscaler(directory):
        return DiffusionUpscaler(directory, device=device, dtype=dtype)
    return EsrganUpscaler(directory, device=device, dtype=dtype)


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


class UpscalePass(FinishingHandler):
    kind = "upscale"
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
            model_scale=str(upscaler.scale),
            tiled="yes" if tiled else "no",
            output_size=f"{size[0]}x{size[1]}",
        )
        if tiled:
            ctx.metadata["tiles"] = str(len(tile_grid(image.width, image.height, tile, overlap)))
        return upscaled
