"""Face detectors (a landmark detector, else OpenCV's Haar cascade) and face-to-slot assignment.

The detector comes from ``<MODEL_DIR>/segmentation/faces/`` by one rule,
:func:`multipass.face_detection.face_detector_choice` (re-exported here with :func:`detector_file`, the
file of the landmark detector or None): an SCRFD/RetinaFace-class ONNX model (insightface's
``det_10g.onnx``, ``scrfd_*.onnx``) gives boxes, scores and five landmarks; without one, the frontal-face
cascade that ships with ``opencv-python-headless`` (``cv2.data.haarcascades``) gives boxes only. Haar
detection runs on a grey, histogram-equalised copy scaled so its longer side is at most ``max_side``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from multipass.errors import FailedPrecondition
from multipass.face_detection import (
    FaceDetectorChoice,
    ScrfdDetector,
    detector_file,
    face_detector_choice,
    face_detector_choice_in,
)
from multipass_segmentation import mask_ops
from multipass_segmentation.slots import Box

__all__ = [
    "DEFAULT_CASCADE",
    "Face",
    "FaceDetector",
    "FaceDetectorChoice",
    "HaarFaceDetector",
    "LandmarkFaceDetector",
    "assign_to_slots",
    "detector_file",
    "face_detector_choice",
    "face_detector_choice_in",
]

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Face:
    box: Box
    score: float
    slot_index: int = -1
    #: Five (x, y) points in image pixels (eyes, nose, mouth corners as seen in the image, left first),
    #: or empty when the detector gives none (Haar).
    landmarks: tuple[tuple[float, float], ...] = ()


class FaceDetector(Protocol):
    #: The model file (ONNX detector or cascade).
    source: Path
    has_landmarks: bool

    def detect(self, image: np.ndarray) -> list[Face]: ...


class LandmarkFaceDetector:
    """An SCRFD-class ONNX detector: faces with five landmarks, left to right."""

    has_landmarks = True

    def __init__(self, path: Path, *, device: str = "cpu", threads: int = 0):
        self.detector = ScrfdDetector(path, device=device, threads=threads)
        self.source = self.detector.path
        if not self.detector.has_landmarks:
            raise FailedPrecondition(
                f"face detector {path} has no landmark outputs (6 or 10 outputs); use an SCRFD model with "
                "keypoints such as det_10g.onnx"
            )

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB ``uint8`` image, left to right; boxes clipped to the image, landmarks as found."""
        height, width = image.shape[:2]
        found = self.detector.detect(image)
        faces = []
        for box, score, points in zip(found.boxes, found.scores, found.landmarks, strict=True):
            clipped = Box(*(float(v) for v in box)).clipped(width, height)
            if clipped.width <= 0 or clipped.height <= 0:
                continue
            landmarks = tuple((float(x), float(y)) for x, y in points)
            faces.append(Face(clipped, float(score), landmarks=landmarks))
        faces.sort(key=lambda f: f.box.centre[0])
        return faces


class HaarFaceDetector:
    """OpenCV's Haar cascade: face boxes without landmarks (the fallback)."""

    has_landmarks = False

    def __init__(
        self,
        cascade_path: Path,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size_fraction: float = 0.03,
        max_side: int = 1024,
    ):
        self.cascade_path = self.source = Path(cascade_path)
        if not self.cascade_path.is_file():
            raise FailedPrecondition(f"face detector cascade not found: {self.cascade_path}")
        try:
            self._cascade = cv2.CascadeClassifier(str(self.cascade_path))
        except (cv2.error, SystemError) as error:
            raise FailedPrecondition(
                f"face detector cascade could not be loaded: {self.cascade_path}: {error}"
            ) from error
        if self._cascade.empty():
            raise FailedPrecondition(f"face detector cascade could not be loaded: {self.cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_fraction = min_size_fraction
        self.max_side = max_side
        self._lock = threading.Lock()

    @classmethod
    def packaged(cls, **options) -> HaarFaceDetector:
        """The frontal-face cascade that ships with OpenCV."""
        return cls(Path(cv2.data.haarcascades) / DEFAULT_CASCADE, **options)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB ``uint8`` image, left to right. Scores map the cascade's confidence to 0..1."""
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        if scale < 1.0:
            grey = cv2.resize(
                grey,
                (max(1, round(width * scale)), max(1, round(height * scale))),
                interpolation=cv2.INTER_AREA,
            )
        grey = cv2.equalizeHist(grey)
        smallest = max(12, int(round(self.min_size_fraction * min(grey.shape))))
        with self._lock:
            rects, _, weights = self._cascade.detectMultiScale3(
                grey,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(smallest, smallest),
                outputRejectLevels=True,
            )
        faces = []
        for (x, y, w, h), weight in zip(np.reshape(rects, (-1, 4)), np.ravel(weights), strict=True):
            box = Box(x / scale, y / scale, (x + w) / scale, (y + h) / scale).clipped(width, height)
            faces.append(Face(box, 1.0 - math.exp(-max(0.0, float(weight)) / 4.0)))
        faces.sort(key=lambda f: f.box.centre[0])
        return faces


def assign_to_slots(
    faces: Sequence[Face], person_masks: Sequence[np.ndarray | None], min_overlap: float = 0.1
) -> list[Face]:
    """Each face gets the slot whose mask covers most of its box; -1 when none covers ``min_overlap`` of it.

    ``person_masks[i]`` is slot i's mask (None for a slot without one). Ties go to the lower slot index.
    """
    assigned = []
    for face in faces:
        best, best_overlap = -1, 0.0
        for index, mask in enumerate(person_masks):
            if mask is None:
                continue
            region = mask_ops.box_mask(mask.shape, face.box.as_tuple())
            total = int(region.sum())
            if total == 0:
                continue
            overlap = float((mask & region).sum()) / total
            if overlap > best_overlap:
                best, best_overlap = index, overlap
        slot = best if best_overlap >= min_overlap and best_overlap > 0 else -1
        assigned.append(dataclasses.replace(face, slot_index=slot))
    return assigned
