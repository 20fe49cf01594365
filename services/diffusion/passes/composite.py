"""The composite pass: merge the outputs of a parallel stage of person passes onto the stage's input.

The gateway runs persons whose crops avoid each other's masks at the same time, each on the stage's input
(``multipass_gateway.domain.person_stages``). A person pass changes its image only where its feathered mask
is non-zero (``crop_inpaint.paste``), so copying each output's pixels exactly there onto the stage's input
gives the image the persons would have made one after the other, byte for byte. No model work: the engine
runs it without a runtime or adapters.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.crop_geometry import feather_sigma
from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import feather
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import PassHandler


class CompositePass(PassHandler):
    kind = "composite"
    uses_models = False

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        problems = []
        if inputs.image is None:
            problems.append(Violation("spec.image", "the composite pass needs the stage's input image"))
        if not spec.layers:
            problems.append(Violation("spec.layers", "the composite pass needs at least one layer"))
        if len(inputs.layers) != len(spec.layers):
            problems.append(
                Violation("spec.layers", f"{len(spec.layers)} layers but {len(inputs.layers)} fetched")
            )
        if inputs.image is not None:
            size = inputs.image.size
            for number, (image, mask) in enumerate(inputs.layers):
                for name, part in (("image", image), ("mask", mask)):
                    if part.size != size:
                        problems.append(
                            Violation(
                                f"spec.layers[{number}].{name}",
                                f"is {part.size[0]}x{part.size[1]}, the image {size[0]}x{size[1]}",
                            )
                        )
        if problems:
            raise InvalidInput.of(problems)

    def run(self, ctx: PassContext) -> Image.Image:
        result = np.array(ctx.inputs.image.convert("RGB"))
        covered = np.zeros(result.shape[:2], dtype=bool)
        changed = []
        for number, ((image, mask), layer) in enumerate(zip(ctx.inputs.layers, ctx.spec.layers, strict=True)):
            region = feather(np.asarray(mask.convert("L")), feather_sigma(layer.mask_blur)) > 0
            if (covered & region).any():
                # The gateway only groups persons whose masks are apart; overlapping layers would depend
                # on their order and not equal the sequential result.
                raise InvalidInput.of(
                    [
                        Violation(
                            f"spec.layers[{number}].mask", "overlaps the feathered mask of an earlier layer"
                        )
                    ]
                )
            covered |= region
            result[region] = np.asarray(image.convert("RGB"))[region]
            changed.append(str(int(region.sum())))
        ctx.metadata["layers"] = str(len(ctx.spec.layers))
        ctx.metadata["layer_pixels"] = ",".join(changed)
        return Image.fromarray(result)
