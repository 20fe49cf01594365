"""The person pass: crop around the person's mask, inpaint with their prompt and LoRA(s), paste back.

Geometry is in :mod:`multipass_diffusion.imaging.crop_inpaint` and :mod:`multipass.crop_geometry` (the crop box,
which the gateway predicts with the same code to run persons in parallel). The crop is cut from the *current* image (the
output of the previous pass), resized to the working size (short side = the model's working size),
inpainted with the optional ControlNet conditioned on the crop (or on the person's skeleton moved into
the crop), resized back in pixel space and pasted with the feathered mask.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.crop_geometry import person_crop_box
from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import Box, feather, mask_box, paste, working_size
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import PassHandler
from multipass_diffusion.passes.sampling import (
    denoising_steps,
    generate,
    scale_skeletons,
    skeletons,
    strength_of,
)
from multipass_diffusion.passes.validation import check_common, check_strength, mask_blur
from multipass_diffusion.preprocessors import CONTROLNET_KINDS

DEFAULT_STRENGTH = 0.5


class PersonPass(PassHandler):
    kind = "person"
    uses_faceid = True

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        check_common(spec)
        problems = []
        if inputs.image is None:
            problems.append(Violation("spec.image", "the person pass needs the current image"))
        if inputs.mask is None:
            problems.append(Violation("spec.mask", "the person pass needs the person's mask"))
        if inputs.image is not None and inputs.mask is not None and inputs.mask.size != inputs.image.size:
            problems.append(
                Violation(
                    "spec.mask",
                    f"is {inputs.mask.size[0]}x{inputs.mask.size[1]}, the image {inputs.image.size[0]}x{inputs.image.size[1]}",
                )
            )
        if spec.controlnet and spec.controlnet not in CONTROLNET_KINDS:
            problems.append(
                Violation(
                    "spec.controlnet",
                    f"got {spec.controlnet!r}; expected one of {', '.join(CONTROLNET_KINDS)}",
                )
            )
        if spec.crop_padding < 0:
            problems.append(Violation("spec.crop_padding", f"got {spec.crop_padding}; expected >= 0"))
        if spec.crop_factor and not 1.0 <= spec.crop_factor <= 10.0:
            problems.append(Violation("spec.crop_factor", f"got {spec.crop_factor}; expected 1..10"))
        if problems:
            raise InvalidInput.of(problems)
        if spec.denoising_strength:
            check_strength(spec.denoising_strength)

    def steps_to_run(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> int:
        """An inpaint of the person's crop at ``denoising_strength``: ``steps × strength`` steps."""
        return denoising_steps(spec.steps, strength_of(spec, DEFAULT_STRENGTH))

    def run(self, ctx: PassContext) -> Image.Image:
        spec = ctx.spec
        image = ctx.inputs.image.convert("RGB")
        strength = strength_of(spec, DEFAULT_STRENGTH)
        if strength <= 0:
            ctx.metadata["strength"] = "0"
            return image  # denoising_strength=0: nothing is repainted
        alpha = feather(np.asarray(ctx.inputs.mask.convert("L")), mask_blur(spec))
        tight = mask_box(alpha)
        if tight is None:
            ctx.warn("the person's mask is empty: the person pass returned the image unchanged")
            return image
        # The gateway predicts this box (multipass_gateway.domain.person_stages) with the same function.
        box = person_crop_box(
            tight,
            image.width,
            image.height,
            crop_padding=spec.crop_padding,
            crop_factor=spec.crop_factor,
            spec_width=spec.width,
            spec_height=spec.height,
            working_size=ctx.working_size,
        )
        size = working_size(box.width, box.height, ctx.working_size)
        ctx.metadata["crop_box"] = str(box)
        ctx.metadata["working_size"] = f"{size[0]}x{size[1]}"
        crop = image.crop((box.x0, box.y0, box.x1, box.y1)).resize(size, Image.Resampling.LANCZOS)
        crop_mask = Image.fromarray(alpha[box.y0 : box.y1, box.x0 : box.x1]).resize(
            size, Image.Resampling.BILINEAR
        )
        control = self._control_image(ctx, crop, box, size) if spec.controlnet else None
        result = generate(
            ctx, "inpaint", size=size, image=crop, mask=crop_mask, control_image=control, strength=strength
        )
        patch = result.resize((box.width, box.height), Image.Resampling.LANCZOS)
        return Image.fromarray(paste(np.asarray(image), np.asarray(patch), alpha, box))

    def _control_image(
        self, ctx: PassContext, crop: Image.Image, box: Box, size: tuple[int, int]
    ) -> Image.Image:
        spec = ctx.spec
        if ctx.inputs.control_image is not None:
            control = ctx.inputs.control_image.convert("RGB")
            return control.crop((box.x0, box.y0, box.x1, box.y1)).resize(size, Image.Resampling.LANCZOS)
        people = skeletons(ctx)
        if spec.controlnet == "pose" and people:
            moved = scale_skeletons(
                people, offset=(box.x0, box.y0), scale=(size[0] / box.width, size[1] / box.height)
            )
            return ctx.runtime.preprocessors.condition("pose", crop, size, skeletons=moved)
        return ctx.runtime.preprocessors.condition(spec.controlnet, crop, size)
