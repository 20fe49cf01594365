"""The face restoration model of ``face_restorer/`` and its loader: GFPGAN or RestoreFormer, as published.

``<MODEL_DIR>/diffusion/face_restorer/`` holds one weights file (``GFPGANv1.4.pth``, ``RestoreFormer.pth``,
or the same as ``.safetensors``); the architecture is read from the file
(:mod:`~multipass_diffusion.nets.image_models`). These networks were trained on face crops of
:data:`FACE_SIZE` pixels aligned to the five-point face template; a crop of another size is resized to it
and back.

GFPGAN's StyleGAN2 decoder adds noise at every layer; it is run with the fixed noise maps stored in its
weights (``randomize_noise=False``), so one crop always restores to the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multipass_diffusion.nets import components
from multipass_diffusion.nets.image_models import FACE_RESTORER_ROLE, load_image_model

#: Side of the square face crops the published face restorers work on.
FACE_SIZE = 512


def _gfpgan(model, image):
    """GFPGAN works in -1..1; its decoder's noise comes from its stored buffers."""
    output = model(image * 2.0 - 1.0, return_rgb=False, randomize_noise=False)[0]
    return (output + 1.0) / 2.0


#: Architectures called directly rather than through spandrel's call (input and output in 0..1).
_CALLS = {"GFPGAN": _gfpgan}


class FaceRestorer:
    """A loaded face restoration network: restores RGB crops of any size."""

    def __init__(self, path: Path, *, device: str, dtype):
        import torch

        self.descriptor = load_image_model(path, FACE_RESTORER_ROLE, device=device, dtype=dtype)
        self.path = Path(path)
        self.architecture = self.descriptor.architecture.name
        self.size = FACE_SIZE
        self.device, self.dtype = device, self.descriptor.dtype
        self._torch = torch

    def restore_tensor(self, image):
        """N x 3 x FACE_SIZE x FACE_SIZE in 0..1 in, the restored crops in 0..1 out."""
        call = _CALLS.get(self.descriptor.architecture.id)
        with self._torch.inference_mode():
            if call is None:
                return self.descriptor(image)
            return call(self.descriptor.model, image).clamp_(0.0, 1.0)

    def restore(self, crop: Image.Image) -> Image.Image:
        """A PIL RGB crop in, the restored crop (same size) out."""
        torch = self._torch
        work = crop.convert("RGB")
        if work.size != (self.size, self.size):
            work = work.resize((self.size, self.size), Image.Resampling.LANCZOS)
        tensor = torch.from_numpy(np.asarray(work, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        output = self.restore_tensor(tensor.to(device=self.device, dtype=self.dtype))
        array = output[0].permute(1, 2, 0).float().cpu().numpy() * 255.0
        restored = Image.fromarray(np.rint(array).clip(0, 255).astype(np.uint8))
        if restored.size != crop.size:
            restored = restored.resize(crop.size, Image.Resampling.LANCZOS)
        return restored


def load_face_restorer(model_dir: Path, *, device: str, dtype) -> FaceRestorer:
    """The face restorer of ``model_dir``; FailedPrecondition naming the missing or unusable file."""
    directory = components.require(model_dir, components.FACE_RESTORER, needed_by="the face_correct pass")
    return FaceRestorer(components.weights_file(directory), device=device, dtype=dtype)
