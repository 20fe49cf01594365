"""The landmark face detector (SCRFD, an ONNX file run with onnxruntime) and which file is one.

The segmentation service finds faces with it (``DetectFaces``, the "face"/"head" phrases); the diffusion
worker finds the face in a tune's reference images with it before embedding them. Both services ship
onnxruntime and OpenCV; they are imported on first use, so the runtime library itself needs neither.

Which file is a landmark detector (:func:`find_landmark_detector`): in a directory, ``det_10g.onnx``
(insightface's ``buffalo_l`` detector), else the first ``scrfd*.onnx``, else the first ``det_*.onnx``
(``buffalo_s``'s ``det_500m.onnx``), by name. For the segmentation service's ``<MODEL_DIR>/segmentation/
faces/``, :func:`face_detector_choice` adds its optional ``config.json`` and the fallback: OpenCV's Haar
cascade (boxes only) when no landmark detector is there. For the diffusion worker's face embedder,
:func:`reference_detector_file` applies the same rule to ``<MODEL_DIR>/diffusion/face_swapper/``.

Detection (insightface's ``SCRFD.detect``): the RGB image is letterboxed into the model's input (its fixed
size, or 640x640 for a model with dynamic sizes: scaled to fit with bilinear interpolation, at the
top-left corner, zeros elsewhere), normalised as ``(pixel - 127.5) / 128`` in RGB order, and the outputs
decoded by :mod:`multipass.scrfd_decode` (score threshold 0.5, NMS 0.4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multipass.errors import FailedPrecondition
from multipass.scrfd_decode import (
    NMS_THRESHOLD,
    SCORE_THRESHOLD,
    Detections,
    LayoutError,
    decode,
    layout_of,
)

#: Landmark detector files looked for in a directory: exact names first, then patterns, each sorted.
DETECTOR_NAMES = ("det_10g.onnx",)
DETECTOR_PATTERNS = ("scrfd*.onnx", "det_*.onnx")
#: The input of a model whose input size is dynamic (insightface's default detection size).
DEFAULT_INPUT_SIZE = (640, 640)
INPUT_MEAN = 127.5
INPUT_STD = 128.0
FACES_DIR = ("segmentation", "faces")
#: Where the face embedder (and the detector that aligns reference faces for it) lives.
EMBEDDER_DIR = ("diffusion", "face_swapper")
LANDMARKS = "landmarks"
HAAR = "haar"


def find_landmark_detector(directory: Path) -> Path | None:
    """The landmark detector file in ``directory`` by the naming rule above, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for name in DETECTOR_NAMES:
        if (directory / name).is_file():
            return directory / name
    for pattern in DETECTOR_PATTERNS:
        found = sorted(p for p in directory.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class FaceDetectorChoice:
    """Which face detector a model directory gives the segmentation service.

    ``kind`` is "landmarks" (``path``: the ONNX file) or "haar" (``path``: the cascade file, None for the
    cascade that ships with OpenCV).
    """

    kind: str
    path: Path | None

    @property
    def has_landmarks(self) -> bool:
        return self.kind == LANDMARKS

    def describe(self) -> str:
        if self.kind == LANDMARKS:
            return f"landmark detector {self.path}"
        cascade = self.path if self.path is not None else "OpenCV's frontal-face cascade"
        return f"Haar fallback {cascade} (boxes only, no landmarks)"


def face_detector_choice(model_dir: Path) -> FaceDetectorChoice:
    """The face detector of ``<model_dir>/segmentation/faces/`` (:func:`face_detector_choice_in`)."""
    return face_detector_choice_in(Path(model_dir).joinpath(*FACES_DIR))


def face_detector_choice_in(faces_dir: Path) -> FaceDetectorChoice:
    """The face detector of a faces directory.

    Its ``config.json``, when present, decides: ``{"detector": "scrfd", "model": FILE}`` or
    ``{"detector": "haar", "cascade": FILE}``. Without one: the landmark detector file found by
    :func:`find_landmark_detector`, else the Haar fallback with OpenCV's cascade. A config that names no
    file or an unknown detector raises FailedPrecondition naming the file (the named file itself is
    checked when it is loaded).
    """
    faces_dir = Path(faces_dir)
    config_path = faces_dir / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        detector = config.get("detector")
        key = {"scrfd": "model", "haar": "cascade"}.get(detector) if isinstance(detector, str) else None
        if key is None:
            raise FailedPrecondition(
                f"{config_path}: detector {detector!r} is not supported; expected 'scrfd' or 'haar'"
            )
        name = config.get(key)
        if not isinstance(name, str) or not name:
            raise FailedPrecondition(f"{config_path} names no {detector} file (key {key!r})")
        return FaceDetectorChoice(LANDMARKS if detector == "scrfd" else HAAR, faces_dir / name)
    found = find_landmark_detector(faces_dir)
    if found is not None:
        return FaceDetectorChoice(LANDMARKS, found)
    return FaceDetectorChoice(HAAR, None)


def detector_file(model_dir: Path) -> Path | None:
    """The landmark detector file the segmentation service uses, or None when it falls back to Haar."""
    choice = face_detector_choice(model_dir)
    return choice.path if choice.has_landmarks else None


def reference_detector_file(model_dir: Path) -> Path | None:
    """The landmark detector that aligns reference faces before the face embedder of
    ``<model_dir>/diffusion/face_swapper/`` embeds them: the ``detector`` its ``config.json`` names (whether
    or not the file is there; loading it says so), else :func:`find_landmark_detector` in that directory,
    else None (reference images are embedded as central squares)."""
    directory = Path(model_dir).joinpath(*EMBEDDER_DIR)
    config_path = directory / "config.json"
    if config_path.is_file():
        name = _read_json(config_path).get("detector")
        if isinstance(name, str) and name:
            return directory / name
    return find_landmark_detector(directory)


def onnx_session(path: Path, *, device: str, threads: int = 0):
    """An onnxruntime session on ``device`` (CUDA when asked for and available, else CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


class ScrfdDetector:
    """One SCRFD ONNX model: faces with scores and (for models with landmark outputs) five landmarks."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        threads: int = 0,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FailedPrecondition(f"face detector not found: {self.path}")
        try:
            self.session = onnx_session(self.path, device=device, threads=threads)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise FailedPrecondition(f"face detector {self.path} does not load: {error}") from error
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise FailedPrecondition(
                f"face detector {self.path}: expected one 1x3xHxW input (SCRFD), got "
                + ", ".join(f"{i.name} {i.shape}" for i in inputs)
            )
        self._input = inputs[0].name
        height, width = inputs[0].shape[2:4]
        static = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
        self.input_size = (int(width), int(height)) if static else DEFAULT_INPUT_SIZE
        self._outputs = [o.name for o in self.session.get_outputs()]
        try:
            strides, _, self.has_landmarks = layout_of(len(self._outputs))
        except LayoutError as error:
            raise FailedPrecondition(f"face detector {self.path} {error}") from error
        if any(self.input_size[0] % s or self.input_size[1] % s for s in strides):
            raise FailedPrecondition(
                f"face detector {self.path}: input {self.input_size[0]}x{self.input_size[1]} is not a "
                f"multiple of its largest stride {max(strides)}"
            )
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The network's input blob (1, 3, H, W) for an RGB ``uint8`` image, and the scale applied."""
        import cv2

        image = as_rgb(image)
        height, width = image.shape[:2]
        input_width, input_height = self.input_size
        if height / width > input_height / input_width:
            new_height = input_height
            new_width = max(1, int(new_height / (height / width)))
        else:
            new_width = input_width
            new_height = max(1, int(new_width * (height / width)))
        scale = new_height / height
        canvas = np.zeros((input_height, input_width, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
        blob = (canvas.astype(np.float32) - INPUT_MEAN) / INPUT_STD
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), scale

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an RGB ``uint8`` image, in its pixels, best score first."""
        blob, scale = self.letterbox(image)
        outputs = self.session.run(self._outputs, {self._input: blob})
        try:
            return decode(
                outputs,
                self.input_size,
                scale,
                score_threshold=self.score_threshold,
                nms_threshold=self.nms_threshold,
            )
        except LayoutError as error:
            raise FailedPrecondition(f"face detector {self.path}: {error}") from error


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A 3-channel ``uint8`` view of a grey, RGB or RGBA image."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"{path} is not readable JSON: {error}") from error
    if not isinstance(value, dict):
        raise FailedPrecondition(f"{path} must hold a JSON object")
    return value
