"""The finishing passes of the diffusion worker and their models.

Pass kinds (the gateway plans them in this order after the person passes): ``hires`` (hires fix),
``faces`` (inpaint_faces), ``face_correct`` (face restoration), ``face_swap`` (identity from a tune's
reference images), ``upscale`` (super-resolution) and ``finish`` (colour grading and film grain). Each
handler has the engine's pass-handler shape (``kind``, ``validate(spec, inputs)``, ``run(ctx)``);
:func:`register` hands them to the engine's registry. Also here for the gateway and the Info rpc:
:func:`expand_prompt` and :func:`installed_capabilities`. See docs/FINISHING.md.

Importing this package is light: torch, diffusers, transformers and onnxruntime load when a pass runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from multipass_diffusion.finishing.components import COMPONENTS, fingerprint, installed_capabilities

KINDS = ("hires", "faces", "face_correct", "face_swap", "upscale", "finish")

__all__ = [
    "COMPONENTS",
    "KINDS",
    "expand_prompt",
    "fingerprint",
    "handlers",
    "installed_capabilities",
    "register",
]


def handlers() -> list:
    """One fresh handler per finishing pass kind, in chain order."""
    from multipass_diffusion.finishing.face_correct import FaceCorrectPass
    from multipass_diffusion.finishing.face_swap import FaceSwapPass
    from multipass_diffusion.finishing.faces import FacesPass
    from multipass_diffusion.finishing.finish import FinishPass
    from multipass_diffusion.finishing.hires import HiresPass
    from multipass_diffusion.finishing.super_resolution import UpscalePass

    return [HiresPass(), FacesPass(), FaceCorrectPass(), FaceSwapPass(), UpscalePass(), FinishPass()]


def register(registry: Callable[[object], object]) -> None:
    """Hand every finishing handler to ``registry`` (the engine's ``multipass_diffusion.passes.register``)."""
    for handler in handlers():
        registry(handler)


def expand_prompt(model_dir: Path, prompt: str, *, max_new_tokens: int = 48, seed: int = 0) -> str:
    """Continue ``prompt`` with the prompt expander under ``model_dir``; see :mod:`.prompt_expansion`."""
    from multipass_diffusion.finishing.prompt_expansion import expand_prompt as expand

    return expand(model_dir, prompt, max_new_tokens=max_new_tokens, seed=seed)
