"""Image-to-image networks read with spandrel: the architecture and its sizes come from the weights file.

A published ``.pth`` or ``.safetensors`` file of an upscaler (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ...)
or a face restorer (GFPGAN, RestoreFormer) loads as it is: spandrel (the loader ComfyUI uses) detects the
architecture from the state dict's keys and its hyper-parameters from the tensors' shapes. Pickled
``.pth`` files are read with spandrel's restricted unpickler, which only rebuilds tensors and containers.
A file spandrel does not recognise, one that does not fit the detected architecture, or a model made for
another job (a face restorer given as upscaler) is ``FailedPrecondition`` naming the file.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from multipass.errors import FailedPrecondition


@dataclass(frozen=True)
class Role:
    """What a component needs from its network: spandrel purposes it accepts and the scales it may have."""

    name: str
    purposes: tuple[str, ...]
    scales: tuple[int, ...]


UPSCALER_ROLE = Role("upscaler", ("SR",), (2, 3, 4, 8))
FACE_RESTORER_ROLE = Role("face restorer", ("FaceSR",), (1,))


def load_image_model(path: Path, role: Role, *, device: str, dtype):
    """The spandrel model descriptor of ``path`` on ``device``, in ``dtype`` or the nearest it supports."""
    import torch
    from safetensors import SafetensorError
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        descriptor = ModelLoader(device="cpu").load_from_file(str(path))
    except UnsupportedModelError as error:
        raise FailedPrecondition(
            f"{path}: the {role.name}'s architecture is not one spandrel recognises from this file's keys"
        ) from error
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, OSError, SafetensorError) as error:
        raise FailedPrecondition(f"{path} cannot be read as {role.name} weights: {error}") from error
    except pickle.UnpicklingError as error:
        raise FailedPrecondition(f"{path} holds more than tensors ({error}); it is not loaded") from error
    architecture = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in role.purposes:
        raise FailedPrecondition(
            f"{path} is a {architecture} model for {descriptor.purpose}, not a {role.name}"
            f" ({' or '.join(role.purposes)})"
        )
    if descriptor.scale not in role.scales:
        raise FailedPrecondition(
            f"{path}: a {architecture} x{descriptor.scale} model; a {role.name} scales by"
            f" {' or '.join(f'x{s}' for s in role.scales)}"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise FailedPrecondition(
            f"{path}: a {architecture} model for {descriptor.input_channels}-channel input and"
            f" {descriptor.output_channels}-channel output; the {role.name} needs RGB in and out"
        )
    return descriptor.to(torch.device(device), supported_dtype(descriptor, dtype, device)).eval()


def supported_dtype(descriptor, dtype, device: str):
    """``dtype`` if the architecture runs in it; else bfloat16 on CUDA where it can; else float32."""
    import torch

    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    return dtype
