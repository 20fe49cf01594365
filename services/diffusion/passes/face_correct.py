"""The ``face_correct`` pass: restore every face with the face restoration model, blend it back.

A face with landmarks is cut as the restorer was trained: warped onto the FFHQ five-point template at the
model's size (:mod:`~multipass_diffusion.imaging.face_align`), restored, warped back through the inverse
transform and blended by the crop inset and feathered (``spec.mask_blur``, default 6% of the face box's
short side). A face without landmarks is cut as a square of ``options["face_correct_context"]`` (default
1.5) times its box's long side, restored, resized back and blended inside the ellipse inscribed in the
box, feathered the same way. Both are weighted by ``options["face_correct_strength"]`` (default 1: the
restored face; lower values keep more of the original, like CodeFormer's fidelity). Pixels outside the
feathered regions are unchanged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import paste
from multipass_diffusion.imaging.face_align import align, ffhq_points, paste_back, warp
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
from multipass_diffusion.passes.context import PassContext, PassInputs
from multipass_diffusion.passes.handler import FINISHING_VERSION, PassHandler
from multipass_diffusion.passes.progress import part_done
from multipass_diffusion.passes.validation import needs_image
from multipass_diffusion.spec_options import option_float

DEFAULT_CONTEXT = 1.5


def load_face_restorer(model_dir, *, device: str, dtype):
    # torch and spandrel load with the first face_correct pass, not with the registry.
    from multipass_diffusion.nets.face_restorers import load_face_restorer as load

    return load(model_dir, device=device, dtype=dtype)


class FaceCorrectPass(PassHandler):
    kind = "face_correct"
    code_version = FINISHING_VERSION
    component = components.FACE_RESTORER

    def __init__(self):
        self._models = components.LoadedModels()

    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        needs_image(inputs, self.kind)
        check_faces(spec)
        option_float(spec, "face_correct_strength", 1.0, low=0.0, high=1.0)
        option_float(spec, "face_correct_context", DEFAULT_CONTEXT, low=1.0, high=4.0)

    def run(self, ctx: PassContext) -> Image.Image:
        spec, runtime = ctx.spec, ctx.runtime
        image = np.asarray(ctx.inputs.image.convert("RGB"))
        size = (image.shape[1], image.shape[0])
        faces = [(face_box(face, size), face_landmarks(face)) for face in spec.faces]
        faces = [(box, landmarks) for box, landmarks in faces if box is not None]
        if not faces:
            ctx.warn("no face to correct: the face_correct pass returned the image unchanged")
            return Image.fromarray(image)
        restorer = self._models.get(
            (
                str(runtime.model_dir),
                runtime.device,
                str(runtime.dtype),
                components.fingerprint(runtime.model_dir, components.FACE_RESTORER),
            ),
            lambda: load_face_restorer(runtime.model_dir, device=runtime.device, dtype=runtime.dtype),
        )
        strength = option_float(spec, "face_correct_strength", 1.0, low=0.0, high=1.0)
        context = option_float(spec, "face_correct_context", DEFAULT_CONTEXT, low=1.0, high=4.0)
        for index, (box, landmarks) in enumerate(faces):
            ctx.monitor.check()
            if landmarks is not None:
                alignment = align(landmarks, restorer.size, ffhq_points(restorer.size))
                restored = restorer.restore(Image.fromarray(warp(image, alignment)))
                alpha = aligned_alpha(alignment, box, spec.mask_blur, strength)
                image = paste_back(image, np.asarray(restored), alpha, alignment)
            else:
                crop = square_crop(box, size, context)
                restored = restorer.restore(Image.fromarray(image).crop((crop.x0, crop.y0, crop.x1, crop.y1)))
                alpha = ellipse_alpha(size, box, crop, sigma=face_sigma(box, spec.mask_blur))
                if strength < 1.0:
                    alpha = np.rint(alpha.astype(np.float32) * strength).astype(np.uint8)
                image = paste(image, np.asarray(restored), alpha, crop)
            part_done(ctx.monitor, index, len(faces))
        ctx.metadata.update(
            faces=str(len(faces)),
            aligned_faces=str(sum(landmarks is not None for _, landmarks in faces)),
            face_restorer_size=str(restorer.size),
            face_restorer_architecture=restorer.architecture,
        )
        return Image.fromarray(image)
