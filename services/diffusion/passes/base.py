"""The base pass: txt2img, img2img, ControlNet (txt2img or img2img), or inpainting inside a prompt mask."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.composition import KIND as COMPOSITION
from multipass_diffusion.faceid import KIND as FACEID
from multipass_diffusion.imaging.crop_inpaint import Box, feather, paste
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import PassHandler
from multipass_diffusion.passes.sampling import (
    batchable,
    denoising_steps,
    generate_batch,
    resolve_size,
    scale_skeletons,
    skeletons,
    strength_of,
)
from multipass_diffusion.passes.validation import check_common, check_strength, mask_blur
from multipass_diffusion.preprocessors import CONTROLNET_KINDS

DEFAULT_IMG2IMG_STRENGTH = 0.8
DEFAULT_INPAINT_STRENGTH = 1.0


class BasePass(PassHandler):
    kind = "base"
    uses_faceid = True

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        check_common(spec)
        problems = []
        if inputs.mask is not None and inputs.image is None:
            problems.append(Violation("spec.mask", "inpainting needs an input image (spec.image)"))
        if inputs.mask is not None and inputs.image is not None and inputs.mask.size != inputs.image.size:
            problems.append(
                Violation(
                    "spec.mask",
                    f"is {inputs.mask.size[0]}x{inputs.mask.size[1]}, the image {inputs.image.size[0]}x{inputs.image.size[1]}",
                )
            )
        if spec.controlnet:
            if spec.controlnet not in CONTROLNET_KINDS:
                problems.append(
                    Violation(
                        "spec.controlnet",
                        f"got {spec.controlnet!r}; expected one of {', '.join(CONTROLNET_KINDS)}",
                    )
                )
            if spec.controlnet == COMPOSITION and any(ref.kind == FACEID for ref in spec.loras):
                problems.append(
                    Violation(
                        "spec.controlnet",
                        "controlnet=composition cannot condition a pass that has a <faceid:...> tag: both are "
                        "image prompts on the same attention layers",
                    )
                )
            has_pose = spec.controlnet == "pose" and (spec.keypoints or spec.skeletons)
            if inputs.image is None and inputs.control_image is None and not has_pose:
                problems.append(
                    Violation(
                        "spec.controlnet",
                        f"controlnet={spec.controlnet} needs an input image or a control image",
                    )
                )
        if problems:
            raise InvalidInput.of(problems)
        if spec.denoising_strength:
            check_strength(spec.denoising_strength)

    def run(self, ctx: PassContext) -> Image.Image:
        (image,) = self.run_batch(ctx, [ctx.spec.seed])
        return image

    @staticmethod
    def task(spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> str:
        """The pipeline task the pass runs: "inpaint" (a mask), "img2img" (an image) or "txt2img"."""
        if inputs.mask is not None:
            return "inpaint"
        if inputs.image is not None and not (spec.controlnet and spec.controlnet_txt2img):
            return "img2img"
        return "txt2img"

    def steps_to_run(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> int:
        """``steps`` from noise (txt2img); ``steps × strength`` from an input image (img2img, inpaint)."""
        task = self.task(spec, inputs)
        if task == "txt2img":
            return spec.steps
        default = DEFAULT_INPAINT_STRENGTH if task == "inpaint" else DEFAULT_IMG2IMG_STRENGTH
        return denoising_steps(spec.steps, strength_of(spec, default))

    def batch_support(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> bool:
        """Whether several seeds of this spec run as one pipeline call (else the engine runs them in turn)."""
        return batchable(spec.scheduler, self.task(spec, inputs))

    def run_batch(self, ctx: PassContext, seeds: list[int]) -> list[Image.Image]:
        """One image per seed (``ctx.spec`` with its seed replaced), in one pipeline call where it can."""
        spec, inputs = ctx.spec, ctx.inputs
        image = inputs.image.convert("RGB") if inputs.image is not None else None
        size = resolve_size(ctx, image)
        if inputs.mask is not None:
            return self._inpaint(ctx, image, inputs.mask, size, seeds)
        resized = (
            image.resize(size, Image.Resampling.LANCZOS)
            if image is not None and image.size != size
            else image
        )
        strength = strength_of(spec, DEFAULT_IMG2IMG_STRENGTH)
        if spec.controlnet:
            control = self._control_image(ctx, image, size)
            if resized is None or spec.controlnet_txt2img:
                return generate_batch(ctx, "txt2img", seeds, size=size, control_image=control)
            if strength <= 0:
                return [resized.copy() for _ in seeds]  # denoising_strength=0: the input as it is
            return generate_batch(
                ctx, "img2img", seeds, size=size, image=resized, control_image=control, strength=strength
            )
        if resized is not None:
            if strength <= 0:
                return [resized.copy() for _ in seeds]  # denoising_strength=0: the input as it is
            return generate_batch(ctx, "img2img", seeds, size=size, image=resized, strength=strength)
        return generate_batch(ctx, "txt2img", seeds, size=size)

    def _control_image(
        self, ctx: PassContext, image: Image.Image | None, size: tuple[int, int]
    ) -> Image.Image:
        spec = ctx.spec
        if ctx.inputs.control_image is not None:
            return ctx.inputs.control_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        people = skeletons(ctx)
        if spec.controlnet == "pose" and people:
            source = image.size if image is not None else size
            sx, sy = size[0] / source[0], size[1] / source[1]
            people = scale_skeletons(people, offset=(0, 0), scale=(sx, sy))
        return ctx.runtime.preprocessors.condition(
            spec.controlnet,
            image,
            size,
            skeletons=people if spec.controlnet == "pose" else (),
            person_boxes=[(b.x0, b.y0, b.x1, b.y1) for b in spec.person_boxes],
        )

    def _inpaint(
        self,
        ctx: PassContext,
        image: Image.Image,
        mask: Image.Image,
        size: tuple[int, int],
        seeds: list[int],
    ) -> list[Image.Image]:
        """Inpaint the whole picture at ``size``, then paste inside the feathered mask at the image's size."""
        spec = ctx.spec
        alpha = feather(np.asarray(mask.convert("L")), mask_blur(spec))
        if not alpha.any():
            ctx.warn("the mask is empty: the base pass returned the input image unchanged")
            return [image.copy() for _ in seeds]
        strength = strength_of(spec, DEFAULT_INPAINT_STRENGTH)
        if strength <= 0:
            return [image.copy() for _ in seeds]  # denoising_strength=0: nothing is repainted
        work_image = image.resize(size, Image.Resampling.LANCZOS)
        work_mask = Image.fromarray(alpha).resize(size, Image.Resampling.BILINEAR)
        control = self._control_image(ctx, image, size) if spec.controlnet else None
        results = generate_batch(
            ctx,
            "inpaint",
            seeds,
            size=size,
            image=work_image,
            mask=work_mask,
            control_image=control,
            strength=strength,
        )
        box = Box(0, 0, image.width, image.height)
        ctx.metadata["working_size"] = f"{size[0]}x{size[1]}"
        pasted = []
        for result in results:
            patch = result.resize(image.size, Image.Resampling.LANCZOS)
            pasted.append(Image.fromarray(paste(np.asarray(image), np.asarray(patch), alpha, box)))
        return pasted
