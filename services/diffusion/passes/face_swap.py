"""The ``face_swap`` pass: identity transfer from a tune's reference images with an inswapper-class model.

The identity of a face is the mean normalised embedding of the reference images of its tune (the first
of ``FaceTarget.loras`` that has reference images, e.g. the ``<faceid:ID:W>`` tune beside a LoRA without
them, or ``options["face_swap_tune"]`` for every face); reference images are face crops, of which the
central square is used. A face none of whose tunes has reference images is left as it is, with a warning. A face with landmarks is swapped as inswapper was trained: on the crop that puts them
on the ArcFace template at the swapper's size (insightface's ``norm_crop``), warped back through the inverse
transform and blended by the crop inset and feathered; a face without them on a square crop around its box,
blended inside the feathered ellipse of the box. The model and its files:
:mod:`multipass_diffusion.nets.face_swapper`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.images import decode_image
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import paste
from multipass_diffusion.imaging.face_align import align, arcface_points, paste_back, warp
from multipass_diffusion.imaging.face_regions import (
    aligned_alpha,
    check_faces,
    ellipse_alpha,
    face_box,
    face_landmarks,
    face_sigma,
    square_crop,
)
from multipass_diffusion.nets import components
from multipass_diffusion.nets.face_swapper import load_face_swapper
from multipass_diffusion.passes import face_tunes
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.progress import part_done
from multipass_diffusion.passes.validation import needs_image
from multipass_diffusion.spec_options import option_float
from multipass_diffusion.tune_files import is_reference_key, tune_file_parts

DEFAULT_CONTEXT = 1.25


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _no_references(tune_ids: list[str]) -> str:
    if len(tune_ids) == 1:
        return f"tune {tune_ids[0]} has no reference images"
    return f"tunes {', '.join(tune_ids)} have no reference images"


class FaceSwapPass(PassHandler):
    kind = "face_swap"
    code_version = FINISHING_VERSION
    component = components.FACE_SWAPPER

    def cache_parts(self, spec: diffusion_pb2.PassSpec, model_dir) -> list[str]:
        """Reference images travel in ``spec.tune_files``, which the engine leaves out of the key."""
        references = [key for key in spec.tune_files if is_reference_key(key)]
        return super().cache_parts(spec, model_dir) + tune_file_parts(spec, references)

    def __init__(self):
        self._models = components.LoadedModels()

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        needs_image(inputs, self.kind)
        check_faces(spec)
        option_float(spec, "face_swap_strength", 1.0, low=0.0, high=1.0)
        option_float(spec, "face_swap_context", DEFAULT_CONTEXT, low=1.0, high=4.0)

    def run(self, ctx: PassContext) -> Image.Image:
        spec, runtime = ctx.spec, ctx.runtime
        components.require(runtime.model_dir, components.FACE_SWAPPER, needed_by="the face_swap pass")
        image = np.asarray(ctx.inputs.image.convert("RGB"))
        size = (image.shape[1], image.shape[0])
        work = []
        for index, face in enumerate(spec.faces):
            box = face_box(face, size)
            forced = spec.options.get("face_swap_tune")
            tune_ids = [forced] if forced else list(dict.fromkeys(ref.tune_id for ref in face.loras))
            if box is None:
                ctx.warn(f"face {index} lies outside the image: skipped")
            elif not tune_ids:
                ctx.warn(f"face {index} belongs to no tune: face swap skipped for it")
            else:
                found = face_tunes.first_with_references(ctx, tune_ids)
                if found is not None:
                    work.append((index, box, face_landmarks(face), *found))
                else:
                    ctx.warn(f"{_no_references(tune_ids)}: face swap skipped for face {index}")
        if not work:
            ctx.warn("no face to swap: the face_swap pass returned the image unchanged")
            return Image.fromarray(image)
        swapper = self._models.get(
            (
                str(runtime.model_dir),
                runtime.device,
                components.fingerprint(runtime.model_dir, components.FACE_SWAPPER),
            ),
            lambda: load_face_swapper(runtime.model_dir, device=runtime.device, threads=_torch_threads()),
        )
        strength = option_float(spec, "face_swap_strength", 1.0, low=0.0, high=1.0)
        context = option_float(spec, "face_swap_context", DEFAULT_CONTEXT, low=1.0, high=4.0)
        identities: dict[str, np.ndarray] = {}
        swapped = []
        aligned = 0
        for part, (index, box, landmarks, tune_id, references) in enumerate(work):
            ctx.monitor.check()
            if tune_id not in identities:
                pictures = [
                    decode_image(path.read_bytes(), field=f"reference image {path.name} of tune {tune_id}")
                    for path in references
                ]
                identities[tune_id] = swapper.identity(pictures)
            if landmarks is not None:
                alignment = align(landmarks, swapper.swap_size, arcface_points(swapper.swap_size))
                result = swapper.swap(Image.fromarray(warp(image, alignment)), identities[tune_id])
                alpha = aligned_alpha(alignment, box, spec.mask_blur, strength)
                image = paste_back(image, np.asarray(result), alpha, alignment)
                aligned += 1
            else:
                crop = square_crop(box, size, context)
                result = swapper.swap(
                    Image.fromarray(image).crop((crop.x0, crop.y0, crop.x1, crop.y1)), identities[tune_id]
                )
                alpha = ellipse_alpha(size, box, crop, sigma=face_sigma(box, spec.mask_blur))
                if strength < 1.0:
                    alpha = np.rint(alpha.astype(np.float32) * strength).astype(np.uint8)
                image = paste(image, np.asarray(result), alpha, crop)
            swapped.append(f"{index}:{tune_id}")
            part_done(ctx.monitor, part, len(work))
        ctx.metadata.update(faces_swapped=";".join(swapped), aligned_faces=str(aligned))
        return Image.fromarray(image)
