"""Identity embeddings of faces with the ArcFace-class embedder of ``face_swapper/`` (onnxruntime).

One embedder serves the ``face_swap`` pass (its swapper's source latent) and ``<faceid:ID:W>`` (the
IP-Adapter FaceID conditioning, :mod:`multipass_diffusion.faceid`). The model is the face swapper's
``arcface.onnx`` (or the ``embedder`` its ``config.json`` names): 1x3xExE RGB normalised to -1..1 in,
1x512 embedding out (ArcFace ``w600k_r50.onnx``'s signature).

Face crops: as insightface's ``FaceAnalysis`` makes them (and as ArcFace and IP-Adapter FaceID were trained
on), when a landmark detector is installed beside the embedder
(:func:`multipass.face_detection.reference_detector_file`: the ``detector`` its ``config.json`` names, else
``det_10g.onnx``, ``scrfd*.onnx`` or ``det_*.onnx`` in ``face_swapper/``, e.g. ``buffalo_l``'s detector): the largest face found in a reference image is warped
onto the ArcFace five-point template at the embedder's size (insightface's ``norm_crop``). Without a
detector, or when it finds no face, the image's central square is resized to the embedder's size
(reference images are face crops: the Tunes API stores them so). The identity of a set of images is the
mean of their normalised embeddings, normalised again (ArcFace's ``normed_embedding`` convention, which
IP-Adapter FaceID was trained on). :meth:`FaceEmbedder.identity_for` caches identities by the images'
sha256s.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition
from multipass.face_detection import ScrfdDetector, onnx_session, reference_detector_file
from multipass.images import decode_image
from multipass_diffusion.imaging.face_align import align, arcface_points, warp
from multipass_diffusion.nets import components

__all__ = [
    "EMBEDDING_SIZE",
    "FaceEmbedder",
    "Reference",
    "center_square",
    "embedder_file",
    "load_embedder",
    "normalise",
    "onnx_session",
    "reference_detector_file",
]

log = logging.getLogger(__name__)

EMBEDDING_SIZE = 512
#: Identities kept per embedder (each is 512 floats).
IDENTITY_CACHE_SIZE = 256


def normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def center_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


@dataclass(frozen=True)
class Reference:
    """One reference image on local disk with its sha256 (the identity cache's key) and a label for errors."""

    path: Path
    sha256: str
    label: str


class FaceEmbedder:
    """The ArcFace-class embedder session of one model file, and an LRU of identities by sha256s.

    With a ``detector``, reference images are aligned by the landmarks of their largest face.
    """

    def __init__(self, path: Path, *, device: str, threads: int = 0, detector: ScrfdDetector | None = None):
        try:
            self.session = onnx_session(path, device=device, threads=threads)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise FailedPrecondition(f"cannot load the face embedder {path}: {error}") from error
        embed_input = self.session.get_inputs()[0]
        if len(embed_input.shape) != 4 or not isinstance(embed_input.shape[2], int):
            raise FailedPrecondition(f"{path}: expected a 1x3xExE input (ArcFace), got {embed_input.shape}")
        self.size = int(embed_input.shape[2])
        self._input = embed_input.name
        self.detector = detector
        self._identities: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def face_crop(self, image: Image.Image) -> tuple[np.ndarray, bool]:
        """The embedder's input crop (size x size RGB) of a reference image, and whether it is aligned."""
        rgb = image.convert("RGB")
        if self.detector is not None:
            pixels = np.asarray(rgb)
            found = self.detector.detect(pixels)
            if len(found):
                areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
                largest = int(np.argmax(areas))
                alignment = align(found.landmarks[largest], self.size, arcface_points(self.size))
                return warp(pixels, alignment), True
            log.info("no face found in a reference image: its central square is embedded")
        work = center_square(rgb).resize((self.size, self.size), Image.Resampling.LANCZOS)
        return np.asarray(work), False

    def embed(self, image: Image.Image) -> np.ndarray:
        """Normalised identity embedding (512,) of a face picture (:meth:`face_crop`)."""
        crop, _ = self.face_crop(image)
        blob = (np.asarray(crop, dtype=np.float32) - 127.5) / 127.5
        output = self.session.run(None, {self._input: blob.transpose(2, 0, 1)[None]})[0]
        return normalise(np.asarray(output, dtype=np.float32).reshape(-1)[:EMBEDDING_SIZE])

    def identity(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Normalised mean of the normalised embeddings of ``images`` (512,), float32."""
        return normalise(np.mean([self.embed(image) for image in images], axis=0)).astype(np.float32)

    def identity_for(self, references: Sequence[Reference]) -> np.ndarray:
        """:meth:`identity` of reference images on disk (decoded as untrusted), cached by their sha256s."""
        key = tuple(reference.sha256 for reference in references)
        with self._lock:
            cached = self._identities.get(key)
            if cached is not None:
                self._identities.move_to_end(key)
                return cached
        pictures = [decode_image(r.path.read_bytes(), field=r.label) for r in references]
        found = self.identity(pictures)
        found.setflags(write=False)
        with self._lock:
            self._identities[key] = found
            while len(self._identities) > IDENTITY_CACHE_SIZE:
                self._identities.popitem(last=False)
        return found


_EMBEDDERS = components.LoadedModels()


def embedder_file(model_dir: Path) -> Path:
    return components.swapper_files(components.component_dir(model_dir, components.FACE_SWAPPER))[1]


def load_embedder(model_dir: Path, *, device: str, threads: int = 0, needed_by: str) -> FaceEmbedder:
    """The embedder of ``model_dir``'s face swapper, loaded once per (directory, device, files).

    FailedPrecondition naming the missing file (or package) when it is not installed.
    """
    path = embedder_file(model_dir)
    if not path.is_file():
        raise FailedPrecondition(f"{needed_by} needs the face embedder: {path} is not installed")
    missing = components.missing_packages(components.FACE_SWAPPER)
    if missing:
        raise FailedPrecondition(
            f"{needed_by} needs the Python package(s) {', '.join(missing)}, which are not installed"
        )
    key = (str(model_dir), device, components.fingerprint(model_dir, components.FACE_SWAPPER))
    return _EMBEDDERS.get(key, lambda: _load(path, reference_detector_file(model_dir), device, threads))


def _load(path: Path, detector_path: Path | None, device: str, threads: int) -> FaceEmbedder:
    detector = None
    if detector_path is not None:
        detector = ScrfdDetector(detector_path, device=device, threads=threads)
        if not detector.has_landmarks:
            raise FailedPrecondition(
                f"face detector {detector_path} has no landmark outputs; it cannot align faces"
            )
    return FaceEmbedder(path, device=device, threads=threads, detector=detector)
