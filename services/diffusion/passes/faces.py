"""The ``faces`` pass (inpaint_faces): crop-inpaint every face with its person's prompt and adapters.

For each face in ``spec.faces`` (left to right), on the *current* image (so later faces see earlier
results), inpainted with the face's prompt, negative prompt and adapters at a denoising strength scaled
by the face's size (:func:`~multipass_diffusion.imaging.face_regions.dynamic_strength`):

- a face with landmarks is cut upright: the crop that puts its landmarks on the ArcFace template, scaled
  so the crop holds the face's square plus ``crop_padding`` on each side, times ``crop_factor``, at the
  working size (:func:`~multipass_diffusion.imaging.face_regions.inpaint_alignment`); the mask is the
  face's square in the crop, feathered by ``mask_blur`` (in crop pixels); the result goes back through the
  inverse transform, blended by that mask;
- a face without landmarks: its box becomes a rectangular mask feathered by ``mask_blur``; the crop
  around it (``crop_padding``, ``crop_factor``, square) is resized so its short side is the working size,
  and the result resized back in pixel space and pasted with the feathered mask.

Pixels outside every feathered face mask are returned byte for byte.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion import faceid
from multipass_diffusion.imaging.crop_inpaint import crop_box, feather, paste, working_size
from multipass_diffusion.imaging.face_align import paste_back, square_alpha, warp
from multipass_diffusion.imaging.face_regions import (
    check_faces,
    dynamic_strength,
    face_box,
    face_landmarks,
    inpaint_alignment,
    rect_mask,
)
from multipass_diffusion.passes import face_tunes
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.progress import PartMonitor
from multipass_diffusion.passes.sampling import generate, strength_of
from multipass_diffusion.passes.validation import check_common, check_strength, mask_blur, needs_image
from multipass_diffusion.spec_options import option_float
from multipass_diffusion.tune_files import reference_keys, tune_file_parts

#: The families whose FaceID weights a face's identity may use (the pass's model is one of them).
FAMILIES = ("sd15", "sdxl")
#: ADetailer's default inpaint strength for faces.
DEFAULT_STRENGTH = 0.4
#: Exponent of the dynamic denoise; 0 turns it off (options["faces_denoise_power"]).
DEFAULT_DENOISE_POWER = 2.0
DEFAULT_PADDING = 32
#: The crop's sides are at least this fraction of the working size (small faces get context).
MIN_CROP_FRACTION = 0.25


class FacesPass(PassHandler):
    kind = "faces"
    code_version = FINISHING_VERSION

    def cache_parts(self, spec: diffusion_pb2.PassSpec, model_dir) -> list[str]:
        """The faces' own LoRA files and FaceID identities are not in the engine's key (it hashes
        ``spec.loras`` only): their files, reference images and the FaceID weights are added."""
        refs = [ref for face in spec.faces for ref in face.loras]
        keys = [ref.tune_id for ref in refs]
        parts = super().cache_parts(spec, model_dir)
        identities = [ref.tune_id for ref in refs if ref.kind == faceid.KIND]
        if identities:
            keys += [key for tune_id in identities for key in reference_keys(spec, tune_id)]
            parts += [f"faceid:{family}:{faceid.fingerprint(Path(model_dir), family)}" for family in FAMILIES]
        return parts + tune_file_parts(spec, keys)

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        check_common(spec)
        needs_image(inputs, self.kind)
        check_faces(spec)
        if spec.crop_padding < 0:
            raise InvalidInput.of([Violation("spec.crop_padding", f"got {spec.crop_padding}; expected >= 0")])
        if spec.crop_factor and not 1.0 <= spec.crop_factor <= 10.0:
            raise InvalidInput.of([Violation("spec.crop_factor", f"got {spec.crop_factor}; expected 1..10")])
        if spec.denoising_strength:
            check_strength(spec.denoising_strength)
        option_float(spec, "faces_denoise_power", DEFAULT_DENOISE_POWER, low=0.0, high=16.0)

    def run(self, ctx: PassContext) -> Image.Image:
        spec = ctx.spec
        image = np.asarray(ctx.inputs.image.convert("RGB"))
        size = (image.shape[1], image.shape[0])
        base_strength = strength_of(spec, DEFAULT_STRENGTH)
        if base_strength <= 0:
            ctx.metadata["strength"] = "0"
            return Image.fromarray(image)  # denoising_strength=0: no face is repainted
        faces = [(index, face, face_box(face, size)) for index, face in enumerate(spec.faces)]
        usable = [(index, face, box) for index, face, box in faces if box is not None]
        for index, _, box in faces:
            if box is None:
                ctx.warn(f"face {index} lies outside the image: skipped")
        if not usable:
            ctx.warn("no face to repaint: the faces pass returned the image unchanged")
            return Image.fromarray(image)
        power = option_float(spec, "faces_denoise_power", DEFAULT_DENOISE_POWER, low=0.0, high=16.0)
        strengths, crops, aligned = [], [], 0
        for part, (index, face, box) in enumerate(usable):
            ratio = box.width * box.height / (size[0] * size[1])
            strength = dynamic_strength(base_strength, ratio, power)
            result = self._face(
                ctx, image, index, face, box, strength, PartMonitor(ctx.monitor, part, len(usable))
            )
            if result is None:
                continue
            image, crop = result
            strengths.append(f"{strength:.3f}")
            crops.append(str(crop))
            aligned += face_landmarks(face) is not None
        ctx.metadata.update(
            faces=str(len(crops)),
            aligned_faces=str(aligned),
            face_strengths=";".join(strengths),
            crop_boxes=";".join(crops),
        )
        return Image.fromarray(image)

    def _face(self, ctx: PassContext, image: np.ndarray, index: int, face, box, strength: float, monitor):
        landmarks = face_landmarks(face)
        if landmarks is not None:
            return self._aligned_face(ctx, image, index, face, landmarks, strength, monitor)
        spec = ctx.spec
        size = (image.shape[1], image.shape[0])
        alpha = feather(rect_mask(size, box), mask_blur(spec))
        crop = crop_box(
            alpha,
            padding=spec.crop_padding or DEFAULT_PADDING,
            crop_factor=spec.crop_factor or 1.0,
            aspect=1.0,
            min_size=ctx.working_size * MIN_CROP_FRACTION,
        )
        if crop is None:
            ctx.warn(f"face {index} has an empty mask: skipped")
            return None
        work = working_size(crop.width, crop.height, ctx.working_size)
        source = Image.fromarray(image)
        crop_image = source.crop((crop.x0, crop.y0, crop.x1, crop.y1)).resize(work, Image.Resampling.LANCZOS)
        crop_mask = Image.fromarray(alpha[crop.y0 : crop.y1, crop.x0 : crop.x1]).resize(
            work, Image.Resampling.BILINEAR
        )
        result = self._inpaint(ctx, index, face, work, crop_image, crop_mask, strength, monitor)
        patch = result.resize((crop.width, crop.height), Image.Resampling.LANCZOS)
        return paste(image, np.asarray(patch), alpha, crop), crop

    def _aligned_face(
        self, ctx: PassContext, image: np.ndarray, index: int, face, landmarks, strength, monitor
    ):
        spec = ctx.spec
        work_side = working_size(ctx.working_size, ctx.working_size, ctx.working_size)[0]
        alignment, face_side = inpaint_alignment(
            landmarks,
            work_side,
            padding=spec.crop_padding or DEFAULT_PADDING,
            crop_factor=spec.crop_factor or 1.0,
            min_side=ctx.working_size * MIN_CROP_FRACTION,
        )
        footprint = alignment.footprint(image.shape[1], image.shape[0])
        if footprint is None:
            ctx.warn(f"face {index} lies outside the image: skipped")
            return None
        alpha = square_alpha(work_side, face_side, mask_blur(spec) * alignment.scale)
        alpha = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
        crop_image = Image.fromarray(warp(image, alignment))
        result = self._inpaint(
            ctx, index, face, (work_side, work_side), crop_image, Image.fromarray(alpha), strength, monitor
        )
        if result.size != (work_side, work_side):
            result = result.resize((work_side, work_side), Image.Resampling.LANCZOS)
        return paste_back(image, np.asarray(result.convert("RGB")), alpha, alignment), footprint

    def _inpaint(self, ctx: PassContext, index: int, face, work, crop_image, crop_mask, strength, monitor):
        """The face's crop inpainted with its prompt and adapters at ``work`` size."""
        spec = ctx.spec
        loras = face.loras if face.loras else spec.loras
        tunes = face_tunes.resolve(ctx, loras, f"spec.faces[{index}].loras")
        for warning in tunes.warnings:
            ctx.warn(warning)
        components, adapters = face_tunes.activate(ctx, tunes)
        if tunes.identity is not None:  # e.g. "0:<tune id>:0.7;2:<tune id>:1"
            told = ctx.metadata.get("faceid", "")
            here = f"{index}:{tunes.identity.tune_id}:{tunes.identity.weight:g}"
            ctx.metadata["faceid"] = f"{told};{here}" if told else here
        face_spec = diffusion_pb2.PassSpec()
        face_spec.CopyFrom(spec)
        face_spec.prompt = face.prompt or spec.prompt
        face_spec.negative_prompt = face.negative_prompt or spec.negative_prompt
        face_spec.seed = (spec.seed + index) % (1 << 32)
        face_spec.controlnet = ""
        face_ctx = dataclasses.replace(
            ctx,
            spec=face_spec,
            components=components,
            adapters=adapters,
            monitor=monitor,
            faceid=tunes.identity,
        )
        return generate(face_ctx, "inpaint", size=work, image=crop_image, mask=crop_mask, strength=strength)
