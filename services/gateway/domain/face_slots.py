"""Which person slot holds a face when the person masks no longer fit the image (pure).

After a pass that resizes the image (hires), the segmentation service cannot assign faces by the person
masks, which have the size of the image they were made on. The face then goes to a slot whose box, scaled
to the current image, holds the face's centre. Where several boxes hold it (persons side by side in a
photo), it goes to the person whose figure is nearest, the rule the person masks' territories follow
(``multipass_segmentation.person_masks``): the slot's visible keypoints, or its box's vertical centre line
when it has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from multipass.v1 import segmentation_pb2

#: Keypoints below this confidence do not mark a figure (as for the person masks).
MIN_KEYPOINT_CONFIDENCE = 0.05


def slot_of_face(
    face: segmentation_pb2.Face, slots: Sequence[segmentation_pb2.Slot], scale: tuple[float, float]
) -> int:
    """The index of the slot holding ``face`` (pixels of the current image); -1 when no slot box holds it.

    ``scale`` (x, y) maps slot coordinates to the current image.
    """
    sx, sy = scale
    cx, cy = (face.box.x0 + face.box.x1) / 2, (face.box.y0 + face.box.y1) / 2
    best, best_distance = -1, math.inf
    for slot in slots:
        box = slot.box
        if not (box.x0 * sx <= cx < box.x1 * sx and box.y0 * sy <= cy < box.y1 * sy):
            continue
        distance = _figure_distance(slot, cx / sx, cy / sy)
        if distance < best_distance:
            best, best_distance = slot.index, distance
    return best


def _figure_distance(slot: segmentation_pb2.Slot, x: float, y: float) -> float:
    """Distance (slot pixels) from (x, y) to the slot's figure: its nearest visible keypoint, else its box's
    vertical centre line."""
    points = [k for k in slot.keypoints if k.confidence >= MIN_KEYPOINT_CONFIDENCE]
    if points:
        return min(math.hypot(k.x - x, k.y - y) for k in points)
    return abs((slot.box.x0 + slot.box.x1) / 2 - x)
