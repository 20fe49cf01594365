"""The pass kinds this worker runs: one handler per kind, each from its own module of this package."""

from __future__ import annotations

from multipass.errors import InvalidInput, Violation
from multipass_diffusion.passes.base import BasePass
from multipass_diffusion.passes.composite import CompositePass
from multipass_diffusion.passes.face_correct import FaceCorrectPass
from multipass_diffusion.passes.face_swap import FaceSwapPass
from multipass_diffusion.passes.faces import FacesPass
from multipass_diffusion.passes.finish import FinishPass
from multipass_diffusion.passes.handler import PassHandler
from multipass_diffusion.passes.hires import HiresPass
from multipass_diffusion.passes.person import PersonPass
from multipass_diffusion.passes.upscale import UpscalePass

#: Pass kind (``PassSpec.kind``) -> its handler, in the order the gateway plans them.
HANDLERS: dict[str, PassHandler] = {
    "base": BasePass(),
    "person": PersonPass(),
    "composite": CompositePass(),
    "hires": HiresPass(),
    "faces": FacesPass(),
    "face_correct": FaceCorrectPass(),
    "face_swap": FaceSwapPass(),
    "upscale": UpscalePass(),
    "finish": FinishPass(),
}


def kinds() -> list[str]:
    return sorted(HANDLERS)


def handler_for(kind: str) -> PassHandler:
    """The handler of ``kind``; InvalidInput naming ``spec.kind`` for a kind this worker does not run."""
    handler = HANDLERS.get(kind)
    if handler is None:
        raise InvalidInput.of(
            [Violation("spec.kind", f"got {kind!r}; this worker runs {', '.join(sorted(HANDLERS))}")]
        )
    return handler
