"""The ``face_swap`` pass: identity transfer from a tune's reference images with an inswapper-class model.

``<MODEL_DIR>/diffusion/face_swapper/`` holds two ONNX models run with onnxruntime (file names from the
optional ``config.json``: ``{"swapper": ..., "embedder": ...}``):

- the swapper (default ``inswapper_128.onnx``), inswapper's signature: ``target`` 1x3xSxS (RGB, 0..1) and
  ``source`` 1x512 (identity latent) in, the swapped 1x3xSxS crop (RGB, 0..1) out. The identity latent
  is the normalised ArcFace embedding times the model's ``emap`` matrix (an initializer named ``emap``,
  or inswapper's last 512x512 initializer), normalised again;
- the embedder (default ``arcface.onnx``), ArcFace's signature: 1x3xExE RGB normalised to -1..1 in,
  1x512 embedding out; :mod:`multipass_diffusion.face_embedding` runs it, for ``<faceid:...>`` too.

The identity of a face is the mean normalised embedding of the reference images of its tune (the first
of ``FaceTarget.loras``, or ``options["face_swap_tune"]`` for every face); reference images are face
crops, of which the central square is used. A face whose tune has no reference images is left as it is,
with a warning. Swapped crops are blended back inside the feathered ellipse of the face box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition
from multipass.images import decode_image
from multipass.v1 import diffusion_pb2
from multipass_diffusion.crop_inpaint import paste
from multipass_diffusion.face_embedding import (
    EMBEDDING_SIZE,
    FaceEmbedder,
    load_embedder,
    normalise,
    onnx_session,
)
from multipass_diffusion.finishing import components, face_tunes
from multipass_diffusion.finishing.face_regions import (
    check_faces,
    ellipse_alpha,
    face_box,
    face_sigma,
    square_crop,
)
from multipass_diffusion.finishing.handler_hooks import FinishingHandler, tune_file_parts
from multipass_diffusion.finishing.options import needs_image, option_float
from multipass_diffusion.finishing.progress import part_done
from multipass_diffusion.passes.context import PassContext, PassInputs

DEFAULT_CONTEXT = 1.25


def _read_emap(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    square = [i for i in model.graph.initializer if list(i.dims) == [EMBEDDING_SIZE, EMBEDDING_SIZE]]
    named = [i for i in square if i.name == "emap"]
    chosen = named[0] if named else (square[-1] if square else None)
    if chosen is None:
        return np.eye(EMBEDDING_SIZE, dtype=np.float32)
    return numpy_helper.to_array(chosen).astype(np.float32)


class FaceSwapper:
    """The swapper session of one face-swapper directory and its identity embedder."""

    def __init__(self, directory: Path, *, device: str, embedder: FaceEmbedder, threads: int = 0):
        swapper_path, _ = components.swapper_files(directory)
        try:
            self.swapper = onnx_session(swapper_path, device=device, threads=threads)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise FailedPrecondition(f"cannot load the face swapper in {directory}: {error}") from error
        self.embedder = embedder
        self._target, self._source = self._swapper_inputs(swapper_path)
        self.swap_size = int(self._target.shape[2])
        self.emap = _read_emap(swapper_path)

    def _swapper_inputs(self, path: Path):
        inputs = self.swapper.get_inputs()
        images = [i for i in inputs if len(i.shape) == 4]
        vectors = [i for i in inputs if len(i.shape) == 2]
        if len(images) != 1 or len(vectors) != 1 or vectors[0].shape[1] != EMBEDDING_SIZE:
            raise FailedPrecondition(
                f"{path}: expected inputs target 1x3xSxS and source 1x{EMBEDDING_SIZE} (inswapper), got "
                + ", ".join(f"{i.name} {i.shape}" for i in inputs)
            )
        if not isinstance(images[0].shape[2], int):
            raise FailedPrecondition(f"{path}: the target input needs a fixed size, got {images[0].shape}")
        return images[0], vectors[0]

    def identity(self, images: list[Image.Image]) -> np.ndarray:
        """The swapper's source latent (1, 512) for the identity shown in ``images``."""
        return normalise(self.embedder.identity(images) @ self.emap).astype(np.float32)[None]

    def swap(self, crop: Image.Image, latent: np.ndarray) -> Image.Image:
        work = crop.resize((self.swap_size, self.swap_size), Image.Resampling.LANCZOS)
        blob = (np.asarray(work, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
        output = self.swapper.run(None, {self._target.name: blob, self._source.name: latent})[0]
        array = np.clip(np.asarray(output[0], dtype=np.float32).transpose(1, 2, 0) * 255.0, 0, 255)
        swapped = Image.fromarray(np.rint(array).astype(np.uint8))
        return swapped.resize(crop.size, Image.Resampling.LANCZOS)


def load_face_swapper(model_dir, *, device: str, threads: int = 0) -> FaceSwapper:
    directory = components.require(model_dir, components.FACE_SWAPPER, needed_by="the face_swap pass")
    embedder = load_embedder(model_dir, device=device, threads=threads, needed_by="the face_swap pass")
    return FaceSwapper(directory, device=device, embedder=embedder, threads=threads)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class FaceSwapPass(FinishingHandler):
    kind = "face_swap"
    component = components.FACE_SWAPPER

    def cache_parts(self, spec: diffusion_pb2.PassSpec, model_dir) -> list[str]:
        """Reference images travel in ``spec.tune_files``, which the engine leaves out of the key."""
        references = [key for key in spec.tune_files if face_tunes.is_reference_key(key)]
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
            tune_id = spec.options.get("face_swap_tune") or (face.loras[0].tune_id if face.loras else "")
            if box is None:
                ctx.warn(f"face {index} lies outside the image: skipped")
            elif not tune_id:
                ctx.warn(f"face {index} belongs to no tune: face swap skipped for it")
            else:
                references = face_tunes.reference_images(ctx, tune_id)
                if references:
                    work.append((index, box, tune_id, references))
                else:
                    ctx.warn(f"tune {tune_id} has no reference images: face swap skipped for face {index}")
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
        for part, (index, box, tune_id, references) in enumerate(work):
            ctx.monitor.check()
            if tune_id not in identities:
                pictures = [
                    decode_image(path.read_bytes(), field=f"reference image {path.name} of tune {tune_id}")
                    for path in references
                ]
                identities[tune_id] = swapper.identity(pictures)
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
        ctx.metadata.update(faces_swapped=";".join(swapped))
        return Image.fromarray(image)
