"""Person slots: where person i is expected, left to right, before anything is generated.

Slots come from persons detected in an input image or from a default layout of N evenly spaced standing
figures. A default figure carries COCO-18 keypoints (OpenPose order) of a person facing the camera, so the
pose image that conditions the base pass and the slot boxes used for segmentation describe the same people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from multipass.errors import InvalidInput, Violation

#: COCO-18 keypoint names in OpenPose order.
KEYPOINT_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

#: A standing person facing the camera, as (u, v) fractions of the figure's box. The person's right side
#: is on the image's left.
STANDING_FIGURE = (
    (0.50, 0.09), (0.50, 0.19),
    (0.28, 0.20), (0.20, 0.36), (0.16, 0.50),
    (0.72, 0.20), (0.80, 0.36), (0.84, 0.50),
    (0.38, 0.52), (0.37, 0.74), (0.36, 0.96),
    (0.62, 0.52), (0.63, 0.74), (0.64, 0.96),
    (0.46, 0.07), (0.54, 0.07), (0.41, 0.08), (0.59, 0.08),
)  # fmt: skip

#: Most persons one request may lay out or segment.
MAX_PERSONS = 16
#: Largest width/height a layout may describe.
MAX_SIDE = 16384


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels; x1/y1 exclusive."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def as_tuple(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1

    def clipped(self, width: int, height: int) -> Box:
        return Box(
            min(max(self.x0, 0.0), width),
            min(max(self.y0, 0.0), height),
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
        )

    def intersects(self, other: Box) -> bool:
        return min(self.x1, other.x1) > max(self.x0, other.x0) and min(self.y1, other.y1) > max(
            self.y0, other.y0
        )

    def iou(self, other: Box) -> float:
        inter_w = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        inter_h = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = inter_w * inter_h
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Keypoint:
    """One COCO-18 keypoint; confidence 0 means not visible."""

    index: int
    x: float
    y: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Slot:
    index: int
    box: Box
    keypoints: tuple[Keypoint, ...] = ()

    def visible_keypoints(self, min_confidence: float = 1e-6) -> list[Keypoint]:
        return [k for k in self.keypoints if k.confidence >= min_confidence]


def figure_keypoints(box: Box, confidence: float = 1.0) -> tuple[Keypoint, ...]:
    """The standing figure's keypoints fitted into ``box``."""
    return tuple(
        Keypoint(i, box.x0 + u * box.width, box.y0 + v * box.height, confidence)
        for i, (u, v) in enumerate(STANDING_FIGURE)
    )


def default_layout(width: int, height: int, count: int) -> list[Slot]:
    """``count`` standing figures, evenly spaced in columns left to right, feet near the bottom.

    A figure is 86% of the image height and at most 40% as wide as tall; where columns are too narrow for
    a figure at least a quarter as wide as tall, the figure is scaled down (feet stay on the same line).
    """
    check_layout_size(width, height, count)
    column = width / count
    bottom = 0.95 * height
    figure_h = 0.86 * height
    figure_w = min(0.9 * column, 0.40 * figure_h)
    if figure_w < 0.25 * figure_h:
        figure_h = figure_w / 0.25
    slots = []
    for i in range(count):
        centre = (i + 0.5) * column
        box = Box(centre - figure_w / 2.0, bottom - figure_h, centre + figure_w / 2.0, bottom)
        slots.append(Slot(i, box, figure_keypoints(box)))
    return slots


def sort_left_to_right(slots: Sequence[Slot]) -> list[Slot]:
    """Slots ordered by box centre x (then y), re-indexed 0..N-1."""
    ordered = sorted(slots, key=lambda s: (s.box.centre[0], s.box.centre[1]))
    return [replace(slot, index=i) for i, slot in enumerate(ordered)]


def slots_from_boxes(
    boxes: Sequence[Box], scores: Sequence[float], width: int, height: int, count: int = 0
) -> list[Slot]:
    """Slots for detected person boxes: the ``count`` best (all when 0), clipped, left to right.

    Detected slots carry no keypoints: no pose is estimated here, and guessed keypoints would steer SAM's
    positive points onto the background for anyone not standing upright.
    """
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    if count > 0:
        order = order[:count]
    chosen = [Slot(0, boxes[i].clipped(width, height)) for i in order]
    return sort_left_to_right([s for s in chosen if s.box.area > 0])


def complete_layout(detected: Sequence[Slot], width: int, height: int, count: int) -> list[Slot]:
    """``count`` slots: the detected ones plus default figures in the columns no detection took.

    Each detected slot claims the free default-layout column whose centre is nearest its own (best
    detections first, as given); the columns left over keep their default figure. Left to right.
    """
    if len(detected) >= count:
        return sort_left_to_right(detected[:count])
    columns = default_layout(width, height, count)
    free = list(range(count))
    for slot in detected:
        nearest = min(free, key=lambda c: abs(columns[c].box.centre[0] - slot.box.centre[0]))
        free.remove(nearest)
    return sort_left_to_right([*detected, *(columns[c] for c in free)])


def check_layout_size(width: int, height: int, count: int, *, prefix: str = "") -> None:
    problems = []
    for name, value in (("width", width), ("height", height)):
        if not 1 <= value <= MAX_SIDE:
            problems.append(Violation(prefix + name, f"got {value}; expected 1..{MAX_SIDE}"))
    if not 1 <= count <= MAX_PERSONS:
        problems.append(Violation(prefix + "count", f"got {count}; expected 1..{MAX_PERSONS}"))
    if problems:
        raise InvalidInput.of(problems)


def check_slots(slots: Sequence[Slot], width: int, height: int, *, field: str = "persons.slots") -> None:
    """Every slot box must have area and lie inside the image; keypoints must be COCO-18 and in the image."""
    problems: list[Violation] = []
    if not slots:
        problems.append(Violation(field, "at least one slot is required"))
    if len(slots) > MAX_PERSONS:
        problems.append(Violation(field, f"got {len(slots)} slots; at most {MAX_PERSONS}"))
    for position, slot in enumerate(slots):
        here = f"{field}[{position}]"
        if slot.index != position:
            problems.append(
                Violation(f"{here}.index", f"got {slot.index}; slots are numbered 0..N-1 in order")
            )
        box = slot.box
        values = box.as_tuple()
        if not all(math.isfinite(v) for v in values):
            problems.append(Violation(f"{here}.box", f"got {values}; coordinates must be finite"))
            continue
        if box.width <= 0 or box.height <= 0:
            problems.append(
                Violation(
                    f"{here}.box", f"got {_fmt(box)}; the box has no area (x1 > x0 and y1 > y0 required)"
                )
            )
        elif box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            problems.append(
                Violation(f"{here}.box", f"got {_fmt(box)}; must lie inside the {width}x{height} image")
            )
        for k, point in enumerate(slot.keypoints):
            where = f"{here}.keypoints[{k}]"
            if not 0 <= point.index < len(KEYPOINT_NAMES):
                problems.append(
                    Violation(f"{where}.index", f"got {point.index}; expected 0..{len(KEYPOINT_NAMES) - 1}")
                )
            if not (math.isfinite(point.x) and math.isfinite(point.y) and math.isfinite(point.confidence)):
                problems.append(Violation(where, "coordinates and confidence must be finite"))
            elif point.confidence > 0 and not (0 <= point.x <= width and 0 <= point.y <= height):
                problems.append(
                    Violation(
                        where, f"got ({point.x:g}, {point.y:g}); must lie inside the {width}x{height} image"
                    )
                )
    if problems:
        raise InvalidInput.of(problems)


def _fmt(box: Box) -> str:
    return f"({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g})"
