"""The inswapper-class face swapper (ONNX, onnxruntime) of ``face_swapper/`` and its loader.

``<MODEL_DIR>/diffusion/face_swapper/`` holds two ONNX models (file names from the optional
``config.json``: ``{"swapper": ..., "embedder": ...}``):

- the swapper (default ``inswapper_128.onnx``), inswapper's signature: ``target`` 1x3xSxS (RGB, 0..1) and
  ``source`` 1x512 (identity latent) in, the swapped 1x3xSxS crop (RGB, 0..1) out. The identity latent
  is the normalised ArcFace embedding times the model's ``emap`` matrix (an initializer named ``emap``,
  or inswapper's last 512x512 initializer), normalised again;
- the embedder (default ``arcface.onnx``), ArcFace's signature: 1x3xExE RGB normalised to -1..1 in,
  1x512 embedding out; :mod:`multipass_diffusion.nets.face_embedding` runs it, for ``<faceid:...>`` too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition
from multipass_diffusion.nets import components
from multipass_diffusion.nets.face_embedding import (
    EMBEDDING_SIZE,
    FaceEmbedder,
    load_embedder,
    normalise,
    onnx_session,
)


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
