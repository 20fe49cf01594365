"""Exactly one mask per person slot, each restricted to its own person by construction.

1. Every slot gets a *territory*: its box, minus the pixels of overlapping boxes that lie nearer to another
   slot's figure (its skeleton when keypoints are given, else the box's vertical centre line). Territories
   are disjoint, so no two person masks share a pixel, and a pixel of person j that is not also nearer to
   person i's figure can never enter mask i.
2. SAM is prompted per slot with the slot box, the slot's visible keypoints as positive points and the
   centres of neighbouring slots as negative points: one mask per instance, never a union cut afterwards.
3. The mask is SAM's mask inside the territory. A slot where SAM finds (almost) nothing gets its silhouette
   (the dilated skeleton, or the territory when there are no keypoints), flagged ``fallback``, so later
   prompts never shift to another person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from multipass_segmentation import mask_ops
from multipass_segmentation.pose_render import skeleton_lines
from multipass_segmentation.sam_masks import Embedding, SamEngine
from multipass_segmentation.slots import Box, Slot

#: Keypoints (neck, hips) that mark a figure's torso, used as its centre when present.
TORSO = (1, 8, 11)


@dataclass(frozen=True)
class PersonMaskOptions:
    #: A SAM mask covering less than this fraction of its territory counts as "nothing found".
    min_fill: float = 0.05
    #: A SAM mask whose predicted IoU is below this counts as "nothing found".
    min_score: float = 0.0
    #: Half-thickness of a fallback skeleton silhouette, as a fraction of the slot box height.
    limb_radius: float = 0.06
    #: Keypoints below this confidence are not used as positive points.
    min_point_confidence: float = 0.05
    #: Slots whose boxes come within this fraction of the slot's size count as neighbours.
    neighbour_margin: float = 0.1


@dataclass(frozen=True)
class PersonMask:
    index: int
    mask: np.ndarray
    score: float
    fallback: bool


def figure_guide(shape: tuple[int, int], slot: Slot, min_confidence: float) -> np.ndarray:
    """The line a slot's figure is measured from: its skeleton, or its box's vertical centre line."""
    points = slot.visible_keypoints(min_confidence)
    if points:
        return skeleton_lines(shape, points)
    box = slot.box
    guide = np.zeros(shape, dtype=np.uint8)
    cx = int(np.clip(round(box.centre[0] - 0.5), 0, shape[1] - 1))
    top = int(np.clip(round(box.y0 + 0.1 * box.height), 0, shape[0] - 1))
    bottom = int(np.clip(round(box.y1 - 0.1 * box.height - 1), 0, shape[0] - 1))
    cv2.line(guide, (cx, top), (cx, max(top, bottom)), 1, thickness=1)
    return guide.astype(bool)


def territories(
    shape: tuple[int, int], slots: Sequence[Slot], min_confidence: float = 0.05
) -> list[np.ndarray]:
    """Disjoint regions, one per slot: its box, where overlaps go to the slot whose figure is nearest.

    Ties go to the smaller box (a person in front of a larger one standing on the same line keeps its
    box), then to the lower slot index.
    """
    boxes = [mask_ops.box_mask(shape, s.box.as_tuple()) for s in slots]
    overlapping = [
        any(i != j and slots[i].box.intersects(slots[j].box) for j in range(len(slots)))
        for i in range(len(slots))
    ]
    if not any(overlapping):
        return boxes
    # Smallest box first; a later slot takes a pixel only when strictly nearer, so ties stay with the first.
    order = sorted(range(len(slots)), key=lambda i: (slots[i].box.area, i))
    best = np.full(shape, np.inf, dtype=np.float32)
    owner = np.full(shape, -1, dtype=np.int32)
    for i in order:
        if overlapping[i]:
            guide = figure_guide(shape, slots[i], min_confidence)
            distance = cv2.distanceTransform(
                np.where(guide, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
            )
        else:
            distance = np.zeros(shape, dtype=np.float32)
        nearer = boxes[i] & (distance < best)
        best[nearer] = distance[nearer]
        owner[nearer] = i
    return [owner == i for i in range(len(slots))]


def silhouette(
    shape: tuple[int, int], slot: Slot, territory: np.ndarray, options: PersonMaskOptions
) -> np.ndarray:
    """What stands in for a slot where nothing was found: the dilated skeleton, else the territory."""
    points = slot.visible_keypoints(options.min_point_confidence)
    if len(points) >= 2:
        thickness = max(3, int(round(2 * options.limb_radius * slot.box.height)))
        figure = skeleton_lines(shape, points, thickness=thickness) & territory
        if figure.any():
            return figure
    return territory.copy()


def figure_centre(slot: Slot, min_confidence: float) -> tuple[float, float]:
    torso = [k for k in slot.visible_keypoints(min_confidence) if k.index in TORSO]
    if torso:
        return float(np.mean([k.x for k in torso])), float(np.mean([k.y for k in torso]))
    return slot.box.centre


def neighbours(slots: Sequence[Slot], index: int, margin: float) -> list[int]:
    box = slots[index].box
    grown = Box(
        box.x0 - margin * box.width,
        box.y0 - margin * box.height,
        box.x1 + margin * box.width,
        box.y1 + margin * box.height,
    )
    return [j for j, other in enumerate(slots) if j != index and grown.intersects(other.box)]


def person_masks(
    engine: SamEngine,
    embedding: Embedding,
    slots: Sequence[Slot],
    options: PersonMaskOptions = PersonMaskOptions(),
) -> tuple[list[PersonMask], list[str]]:
    """One mask per slot, in slot order, and a warning per slot that fell back to its silhouette."""
    shape = embedding.original_size
    regions = territories(shape, slots, options.min_point_confidence)
    results: list[PersonMask] = []
    warnings: list[str] = []
    for i, slot in enumerate(slots):
        positive = [(k.x, k.y) for k in slot.visible_keypoints(options.min_point_confidence)]
        negative = [
            figure_centre(slots[j], options.min_point_confidence)
            for j in neighbours(slots, i, options.neighbour_margin)
        ]
        predicted = engine.predict(embedding, box=slot.box.as_tuple(), positive=positive, negative=negative)
        mask = predicted.mask & regions[i]
        territory_area = int(regions[i].sum())
        found = (
            territory_area > 0
            and mask.sum() >= options.min_fill * territory_area
            and predicted.score >= options.min_score
        )
        if found:
            results.append(PersonMask(i, mask, predicted.score, fallback=False))
            continue
        results.append(PersonMask(i, silhouette(shape, slot, regions[i], options), 0.0, fallback=True))
        warnings.append(
            f"person slot {i}: nothing segmented inside its box (SAM score {predicted.score:.2f}, "
            f"{int(mask.sum())} of {territory_area} pixels); its slot silhouette stands in"
        )
    return results, warnings
