"""Pose skeleton images in the OpenPose COCO-18 convention, so that pose ControlNets accept them.

Black background; the 17 limbs are filled ellipses in the OpenPose limb colours at 60% intensity, then the
18 keypoints are filled circles in the full keypoint colours (the convention of the ControlNet 1.1 OpenPose
preprocessor). Line width and circle radius are 4 pixels at 512 pixels on the shorter side and scale with
the image, as the preprocessor draws at its detection resolution and resizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from multipass_segmentation.slots import Keypoint, Slot

#: Limbs as pairs of COCO-18 keypoint indices, in OpenPose drawing order.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

#: RGB colour of limb i and of keypoint i.
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

LIMB_INTENSITY = 0.6


def stroke_width(width: int, height: int) -> int:
    """Half-thickness of limbs and radius of keypoints for an image of this size."""
    return max(2, int(round(4 * min(width, height) / 512)))


def render_pose(width: int, height: int, slots: Sequence[Slot]) -> np.ndarray:
    """RGB ``uint8`` image of every slot's skeleton (slots without keypoints draw nothing)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    stick = stroke_width(width, height)
    for slot in slots:
        _draw_skeleton(canvas, slot.keypoints, stick)
    return canvas


def _draw_skeleton(canvas: np.ndarray, keypoints: Sequence[Keypoint], stick: int) -> None:
    points = {k.index: (k.x, k.y) for k in keypoints if k.confidence > 0}
    for limb, (a, b) in enumerate(LIMBS):
        if a not in points or b not in points:
            continue
        (xa, ya), (xb, yb) = points[a], points[b]
        centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        polygon = cv2.ellipse2Poly(centre, (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
        colour = tuple(int(c * LIMB_INTENSITY) for c in COLOURS[limb])
        cv2.fillConvexPoly(canvas, polygon, colour)
    for index, (x, y) in points.items():
        cv2.circle(canvas, (int(round(x)), int(round(y))), stick, COLOURS[index], thickness=-1)


def skeleton_lines(shape: tuple[int, int], keypoints: Sequence[Keypoint], thickness: int = 1) -> np.ndarray:
    """Boolean mask of the limbs (and isolated keypoints) as lines of ``thickness`` pixels."""
    canvas = np.zeros(shape, dtype=np.uint8)
    points = {k.index: (int(round(k.x)), int(round(k.y))) for k in keypoints if k.confidence > 0}
    for a, b in LIMBS:
        if a in points and b in points:
            cv2.line(canvas, points[a], points[b], 1, thickness=max(1, thickness))
    for x, y in points.values():
        cv2.circle(canvas, (x, y), max(0, thickness // 2), 1, thickness=-1)
    return canvas.astype(bool)
