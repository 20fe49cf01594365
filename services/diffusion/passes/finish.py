"""The ``finish`` pass: colour grading, then film grain, as set in ``spec.options``.

- ``color_grading``: a look name of :data:`~multipass_diffusion.imaging.grading.LOOKS`
  ("Film Velvia", "Film Portra", "Ektar"; case-insensitive);
- ``film_grain``: grain strength 0..1, or ``true``/``on`` for :data:`DEFAULT_GRAIN`; ``0``/``false`` off;
- ``film_grain_size`` (Gaussian sigma of the grain in pixels, default 0.7), ``film_grain_chroma`` (0..1).

The grain is seeded by ``spec.seed`` (the image's seed), so a finish pass is deterministic.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging import grading
from multipass_diffusion.imaging.grain import film_grain
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.validation import needs_image
from multipass_diffusion.spec_options import option_float

DEFAULT_GRAIN = 0.35
DEFAULT_GRAIN_SIZE = 0.7
_ON = ("true", "on", "yes")
_OFF = ("false", "off", "no", "none")


def grain_strength(spec: diffusion_pb2.PassSpec) -> float:
    raw = spec.options.get("film_grain", "").strip().lower()
    if not raw or raw in _OFF:
        return 0.0
    if raw in _ON:
        return DEFAULT_GRAIN
    return option_float(spec, "film_grain", DEFAULT_GRAIN, low=0.0, high=1.0)


def look(spec: diffusion_pb2.PassSpec) -> grading.Look | None:
    raw = spec.options.get("color_grading", "").strip()
    if not raw or raw.lower() in _OFF:
        return None
    found = grading.look_named(raw)
    if found is None:
        raise InvalidInput.of(
            [
                Violation(
                    "spec.options[color_grading]",
                    f"got {raw!r}; expected one of {', '.join(repr(n) for n in grading.LOOKS)}",
                )
            ]
        )
    return found


class FinishPass(PassHandler):
    kind = "finish"
    code_version = FINISHING_VERSION

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        needs_image(inputs, self.kind)
        look(spec)
        grain_strength(spec)
        option_float(spec, "film_grain_size", DEFAULT_GRAIN_SIZE, low=0.0, high=8.0)
        option_float(spec, "film_grain_chroma", 0.0, low=0.0, high=1.0)

    def run(self, ctx: PassContext) -> Image.Image:
        spec = ctx.spec
        image = np.asarray(ctx.inputs.image.convert("RGB"))
        chosen = look(spec)
        strength = grain_strength(spec)
        if chosen is None and strength == 0:
            ctx.warn("the finish pass has neither color_grading nor film_grain: image unchanged")
            return Image.fromarray(image)
        ctx.monitor.check()
        if chosen is not None:
            image = grading.color_grade(image, chosen)
            ctx.metadata["color_grading"] = chosen.name
        if strength > 0:
            image = film_grain(
                image,
                strength=strength,
                seed=spec.seed,
                size=option_float(spec, "film_grain_size", DEFAULT_GRAIN_SIZE, low=0.0, high=8.0),
                chroma=option_float(spec, "film_grain_chroma", 0.0, low=0.0, high=1.0),
            )
            ctx.metadata["film_grain"] = f"{strength:g}"
        return Image.fromarray(image)
