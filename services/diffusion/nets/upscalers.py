"""The super-resolution models of ``upscaler/`` and their loader: any spandrel upscaler, or diffusers' x4.

``<MODEL_DIR>/diffusion/upscaler/`` holds either one published weights file (``*.pth`` or
``*.safetensors`` of ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ... at x2 or x4: the architecture is read from
the file, :mod:`~multipass_diffusion.nets.image_models`), or a ``StableDiffusionUpscalePipeline`` in
diffusers format (``model_index.json``). Both run ``uint8 H x W x 3`` in, ``float32 (H*scale) x
(W*scale) x 3`` (0..255) out; torch, spandrel and diffusers load with the first upscaler.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition
from multipass.v1 import diffusion_pb2
from multipass_diffusion.nets import components
from multipass_diffusion.nets.image_models import UPSCALER_ROLE, load_image_model
from multipass_diffusion.spec_options import option_int

DEFAULT_DIFFUSION_STEPS = 20
DEFAULT_NOISE_LEVEL = 20


class SpandrelUpscaler:
    """A published super-resolution network, its architecture detected from its weights file."""

    def __init__(self, path: Path, *, device: str, dtype):
        import torch

        self.model = load_image_model(path, UPSCALER_ROLE, device=device, dtype=dtype)
        self.path = Path(path)
        self.architecture = self.model.architecture.name
        self.scale = int(self.model.scale)
        self.device, self.dtype = device, self.model.dtype
        #: One model call per tile: the pass reports each tile as a step.
        self.reports_steps = False
        self._torch = torch

    def run(self, array: np.ndarray, spec: diffusion_pb2.PassSpec, monitor) -> np.ndarray:
        """uint8 H x W x 3 in, float32 (H*scale) x (W*scale) x 3 in 0..255 out.

        The descriptor pads the input to the architecture's size requirements (window or pixel-unshuffle
        multiples) and crops the padding off the output.
        """
        torch = self._torch
        monitor.check()
        tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)[None]
        tensor = tensor.to(device=self.device, dtype=self.dtype) / 255.0
        with torch.inference_mode():
            output = self.model(tensor)
        return output[0].permute(1, 2, 0).float().cpu().numpy() * 255.0


class DiffusionUpscaler:
    """diffusers' ``StableDiffusionUpscalePipeline`` (text-guided x4), seeded and step-monitored."""

    scale = 4
    architecture = "StableDiffusionUpscalePipeline"
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
        # This pipeline only has the legacy per-step callback(step, timestep, latents), and does not say
        # its number of steps where a step monitor reads it (``_num_timesteps``).
        count = SimpleNamespace(_num_timesteps=steps)
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
    """The upscaler of ``model_dir``; FailedPrecondition naming the missing or unusable file."""
    directory = components.require(model_dir, components.UPSCALER, needed_by="the upscale pass")
    if components.is_diffusers_upscaler(directory):
        return DiffusionUpscaler(directory, device=device, dtype=dtype)
    return SpandrelUpscaler(components.weights_file(directory), device=device, dtype=dtype)
