"""Decoding the raw outputs of an SCRFD face detector into boxes, scores and five landmarks (pure numpy).

This follows insightface's ``model_zoo/scrfd.py``. The network sees the image letterboxed into its input
(scaled to fit, placed at the top-left corner, zero elsewhere). For each feature stride it predicts, per
location and anchor (locations row-major, the anchors of a location consecutive):

- a score (sigmoid, 0..1);
- four distances from the anchor centre to the box's left, top, right and bottom edges, in units of the
  stride;
- with landmarks, ten offsets (x, y of five points) from the anchor centre, in units of the stride.

The anchor centre of location (row, column) is (column * stride, row * stride). Candidates scoring at
least the threshold are kept, mapped back to image pixels by the letterbox scale, and reduced by greedy
non-maximum suppression (insightface's: areas counted with +1 pixel, a candidate goes when its overlap
with a kept one exceeds the threshold).

The output layouts insightface recognises by their number: 6 (strides 8, 16, 32, two anchors, no
landmarks), 9 (the same with landmarks: ``det_10g.onnx`` of ``buffalo_l``, ``scrfd_*_kps.onnx``),
10 and 15 (strides 8 to 128, one anchor). Outputs come as all score tensors by stride, then all box
tensors, then all landmark tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Number of outputs -> (strides, anchors per location, has landmarks), as insightface reads them.
OUTPUT_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4
LANDMARKS = 5


@dataclass(frozen=True)
class Detections:
    """Faces in image pixels, best score first: boxes (N, 4) x0 y0 x1 y1, scores (N,), landmarks (N, 5, 2)
    or None for a model without landmark outputs."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class LayoutError(ValueError):
    """The outputs do not have the layout of an SCRFD detector."""


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(height * width * anchors, 2) x, y centres, row-major, each location repeated ``anchors`` times."""
    centres = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    centres = (centres * stride).reshape(-1, 2)
    if anchors > 1:
        centres = np.stack([centres] * anchors, axis=1).reshape(-1, 2)
    return centres


def distance_to_boxes(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) from centres (N, 2) and left, top, right, bottom distances (N, 4)."""
    return np.stack(
        [
            points[:, 0] - distances[:, 0],
            points[:, 1] - distances[:, 1],
            points[:, 0] + distances[:, 2],
            points[:, 1] + distances[:, 3],
        ],
        axis=-1,
    )


def distance_to_points(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Points (N, K, 2) from centres (N, 2) and x, y offsets (N, 2K)."""
    offsets = distances.reshape(distances.shape[0], distances.shape[1] // 2, 2)
    return points[:, None, :] + offsets


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first (insightface's +1 pixel areas)."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        overlap = width * height
        iou = overlap / (areas[best] + areas[rest] - overlap)
        order = rest[iou <= threshold]
    return keep


def layout_of(count: int) -> tuple[tuple[int, ...], int, bool]:
    if count not in OUTPUT_LAYOUTS:
        raise LayoutError(f"has {count} outputs; an SCRFD detector has {', '.join(map(str, OUTPUT_LAYOUTS))}")
    return OUTPUT_LAYOUTS[count]


def decode(
    outputs: list[np.ndarray],
    input_size: tuple[int, int],
    scale: float,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
) -> Detections:
    """Faces from the raw ``outputs`` of one letterboxed input of ``input_size`` (width, height).

    ``scale`` is the letterbox's factor (input pixels per image pixel). Batched outputs (a leading
    dimension of 1) are accepted. LayoutError names the first output that does not fit.
    """
    strides, anchors, with_landmarks = layout_of(len(outputs))
    levels = len(strides)
    width, height = input_size
    boxes, scores, points = [], [], []
    for level, stride in enumerate(strides):
        rows = (height // stride) * (width // stride) * anchors
        score = _rows(outputs, level, rows, 1)[:, 0]
        distances = _rows(outputs, level + levels, rows, 4) * stride
        centres = anchor_centres(height // stride, width // stride, stride, anchors)
        kept = np.nonzero(score >= score_threshold)[0]
        scores.append(score[kept])
        boxes.append(distance_to_boxes(centres[kept], distances[kept]))
        if with_landmarks:
            offsets = _rows(outputs, level + 2 * levels, rows, 2 * LANDMARKS) * stride
            points.append(distance_to_points(centres[kept], offsets[kept]))
    all_scores = np.concatenate(scores).astype(np.float32)
    all_boxes = (np.concatenate(boxes) / scale).astype(np.float32)
    all_points = (np.concatenate(points) / scale).astype(np.float32) if with_landmarks else None
    if all_scores.size == 0:
        return Detections(
            np.zeros((0, 4), np.float32),
            all_scores,
            np.zeros((0, LANDMARKS, 2), np.float32) if with_landmarks else None,
        )
    order = all_scores.argsort(kind="stable")[::-1]
    all_scores, all_boxes = all_scores[order], all_boxes[order]
    if all_points is not None:
        all_points = all_points[order]
    keep = nms(all_boxes, all_scores, nms_threshold)
    return Detections(all_boxes[keep], all_scores[keep], all_points[keep] if all_points is not None else None)


def _rows(outputs: list[np.ndarray], index: int, rows: int, columns: int) -> np.ndarray:
    array = np.asarray(outputs[index], dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (rows, columns):
        raise LayoutError(
            f"output {index} has shape {tuple(np.shape(outputs[index]))}; expected ({rows}, {columns}) "
            "(scores, then boxes, then landmarks, by stride)"
        )
    return array
