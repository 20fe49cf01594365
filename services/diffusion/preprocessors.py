"""ControlNet conditioning images ("preprocessors"), one per ControlNet kind.

Built in (no weights): ``canny`` (OpenCV Canny), ``pose`` from keypoints (an OpenPose-coloured skeleton),
``mlsd`` (straight segments by OpenCV's probabilistic Hough transform on Canny edges, drawn white on black),
``tile``, ``qr``, ``reference`` and ``composition`` (the image itself, resized). From the model directory (a clear FailedPrecondition
naming the missing file otherwise): ``pose`` estimated from a photo (a transformers ViTPose model under
``preprocessors/pose/``), ``depth`` (a transformers depth-estimation model under ``preprocessors/depth/``),
``hed`` and ``lineart`` (the published ControlNet 1.1 annotators ``preprocessors/hed/ControlNetHED.pth``
and ``preprocessors/lineart/sk_model.pth``, :mod:`multipass_diffusion.annotators`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.model_catalog.layout import PREPROCESSOR_FILES

#: ControlNet kinds served: those with a model (``diffusion/controlnet/...``), ``reference``, which
#: needs none (:mod:`multipass_diffusion.reference_attention`), and ``composition``, an image-prompt
#: adapter (:mod:`multipass_diffusion.composition`).
CONTROLNET_KINDS = (
    "pose",
    "canny",
    "depth",
    "lineart",
    "mlsd",
    "hed",
    "tile",
    "qr",
    "reference",
    "composition",
)
#: Kinds whose conditioning image needs weights from the model directory (pose only without keypoints),
#: and the files that may hold them, the first the usual one (the model catalog's layout).
WEIGHTED_KINDS = PREPROCESSOR_FILES

# OpenPose body-18 limbs (1-based keypoint pairs) and the colours ControlNet's pose models were trained on.
_LIMBS = (
    (2, 3),
    (2, 6),
    (3, 4),
    (4, 5),
    (6, 7),
    (7, 8),
    (2, 9),
    (9, 10),
    (10, 11),
    (2, 12),
    (12, 13),
    (13, 14),
    (2, 1),
    (1, 15),
    (15, 17),
    (1, 16),
    (16, 18),
)
_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170),
    (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
# COCO-17 (ViTPose) index -> OpenPose-18 index; the neck (1) is the midpoint of the shoulders.
_COCO17_TO_OPENPOSE = {
    0: 0,
    1: 15,
    2: 14,
    3: 17,
    4: 16,
    5: 5,
    6: 2,
    7: 6,
    8: 3,
    9: 7,
    10: 4,
    11: 11,
    12: 8,
    13: 12,
    14: 9,
    15: 13,
    16: 10,
}


@dataclass(frozen=True)
class Point:
    """One keypoint in OpenPose-18 order (index), pixel coordinates, confidence (0 = not visible)."""

    index: int
    x: float
    y: float
    confidence: float = 1.0


def draw_pose(
    skeletons: Sequence[Sequence[Point]], width: int, height: int, *, min_confidence: float = 0.05
) -> Image.Image:
    """An OpenPose-style skeleton image (black background, coloured limbs and joints)."""
    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    scale = max(1.0, min(width, height) / 512)
    stick = max(1, int(round(4 * scale)))
    for points in skeletons:
        by_index = {p.index: p for p in points if p.confidence >= min_confidence and 0 <= p.index < 18}
        for limb, (a, b) in enumerate(_LIMBS):
            pa, pb = by_index.get(a - 1), by_index.get(b - 1)
            if pa is None or pb is None:
                continue
            mx, my = (pa.x + pb.x) / 2, (pa.y + pb.y) / 2
            length = math.hypot(pa.x - pb.x, pa.y - pb.y)
            angle = math.degrees(math.atan2(pa.y - pb.y, pa.x - pb.x))
            polygon = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), stick), int(angle), 0, 360, 1)
            colour = tuple(int(c * 0.6) for c in _COLOURS[limb])
            cv2.fillConvexPoly(canvas, polygon, colour)
        for index, point in by_index.items():
            cv2.circle(canvas, (int(point.x), int(point.y)), stick, _COLOURS[index], thickness=-1)
    return Image.fromarray(canvas)


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def straight_lines(image: Image.Image) -> Image.Image:
    """Straight segments (M-LSD's kind of conditioning) found without weights."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, 50, 150)
    short = min(gray.shape)
    segments = cv2.HoughLinesP(
        edges, 1, np.pi / 180, threshold=40, minLineLength=max(8, short // 16), maxLineGap=max(2, short // 64)
    )
    canvas = np.zeros_like(gray)
    if segments is not None:
        for x0, y0, x1, y1 in segments[:, 0]:
            cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return Image.fromarray(np.stack([canvas] * 3, axis=-1))


class Preprocessors:
    """Makes conditioning images; loads weighted preprocessors from ``<model_dir>/diffusion/preprocessors``."""

    def __init__(self, root: Path, device: str = "cpu"):
        self.root = Path(root)
        self.device = device
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def installed(self) -> list[str]:
        """Kinds whose weights are present (capabilities)."""
        return [kind for kind in WEIGHTED_KINDS if self._installed_file(kind) is not None]

    def _installed_file(self, kind: str) -> Path | None:
        return next((self.root / name for name in WEIGHTED_KINDS[kind] if (self.root / name).is_file()), None)

    def condition(
        self,
        kind: str,
        image: Image.Image | None,
        size: tuple[int, int],
        *,
        skeletons: Sequence[Sequence[Point]] = (),
        person_boxes: Sequence[tuple[float, float, float, float]] = (),
    ) -> Image.Image:
        """The conditioning image for ``kind`` at ``size`` (width, height).

        ``person_boxes`` (x0, y0, x1, y1 in ``image``'s pixels): pose is estimated once per box, one
        skeleton each; without them the whole image is one person."""
        if kind not in CONTROLNET_KINDS:
            raise InvalidInput.of(
                [Violation("spec.controlnet", f"got {kind!r}; expected one of {', '.join(CONTROLNET_KINDS)}")]
            )
        width, height = size
        if kind == "pose" and skeletons:
            return draw_pose(skeletons, width, height)
        if image is None:
            raise InvalidInput.of(
                [Violation("spec.image", f"controlnet={kind} needs an input image (or keypoints for pose)")]
            )
        sx, sy = width / image.width, height / image.height
        boxes = [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in person_boxes]
        image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        if kind == "canny":
            return canny(image)
        if kind == "mlsd":
            return straight_lines(image)
        if kind in ("tile", "qr", "reference", "composition"):
            return image
        if kind == "pose":
            return draw_pose(self._estimate_poses(image, boxes), width, height)
        if kind == "depth":
            return self._depth(image)
        return self._edge_network(kind, image)

    def _require(self, kind: str) -> Path:
        path = self._installed_file(kind)
        if path is None:
            what = "pose estimation from a photo" if kind == "pose" else f"the {kind} preprocessor"
            raise FailedPrecondition(
                f"{what} needs {self.root / WEIGHTED_KINDS[kind][0]}, which is not installed"
            )
        return path

    def _model(self, kind: str, load):
        with self._lock:
            if kind not in self._loaded:
                self._loaded[kind] = load(self._require(kind))
            return self._loaded[kind]

    def _edge_network(self, kind: str, image: Image.Image) -> Image.Image:
        import torch

        from multipass_diffusion.annotators import load_network

        network = self._model(kind, lambda path: load_network(kind, path, self.device))
        pixels = (
            torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
            .permute(2, 0, 1)[None]
            .to(self.device)
        )
        with torch.no_grad():
            edges = network(pixels)[0, 0].clamp(0, 1).float().cpu().numpy()
        channel = np.rint(edges * 255).astype(np.uint8)
        return Image.fromarray(np.stack([channel] * 3, axis=-1))

    def _depth(self, image: Image.Image) -> Image.Image:
        import torch

        def load(path: Path):
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            return AutoImageProcessor.from_pretrained(
                path.parent
            ), AutoModelForDepthEstimation.from_pretrained(path.parent).to(self.device).eval()

        processor, model = self._model("depth", load)
        inputs = processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            depth = model(**inputs).predicted_depth
        depth = torch.nn.functional.interpolate(
            depth[:, None].float(), size=(image.height, image.width), mode="bicubic"
        )[0, 0]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp(min=1e-6)
        channel = np.rint(depth.cpu().numpy() * 255).astype(np.uint8)
        return Image.fromarray(np.stack([channel] * 3, axis=-1))

    def _estimate_poses(
        self, image: Image.Image, boxes: Sequence[tuple[float, float, float, float]] = ()
    ) -> list[list[Point]]:
        """One skeleton per person box (x0, y0, x1, y1; none: the whole image), in OpenPose-18 order."""
        import torch

        def load(path: Path):
            from transformers import AutoProcessor, VitPoseForPoseEstimation

            return AutoProcessor.from_pretrained(path.parent), VitPoseForPoseEstimation.from_pretrained(
                path.parent
            ).to(self.device).eval()

        processor, model = self._model("pose", load)
        usable = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes if x1 - x0 >= 1 and y1 - y0 >= 1]
        # The processor takes boxes as (x, y, width, height), COCO's way.
        coco = [
            [list(map(float, box)) for box in usable] or [[0.0, 0.0, float(image.width), float(image.height)]]
        ]
        inputs = processor(image, boxes=coco, return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = model(**inputs)
        return [
            _openpose_points(person)
            for person in processor.post_process_pose_estimation(outputs, boxes=coco)[0]
        ]


def _openpose_points(person: dict) -> list[Point]:
    """A COCO-17 estimate as OpenPose-18 points (the neck is the shoulders' midpoint)."""
    points = [
        Point(_COCO17_TO_OPENPOSE[int(i)], float(xy[0]), float(xy[1]), float(score))
        for i, (xy, score) in enumerate(zip(person["keypoints"], person["scores"], strict=True))
        if int(i) in _COCO17_TO_OPENPOSE
    ]
    shoulders = [p for p in points if p.index in (2, 5)]
    if len(shoulders) == 2:
        a, b = shoulders
        points.append(Point(1, (a.x + b.x) / 2, (a.y + b.y) / 2, min(a.confidence, b.confidence)))
    return points
