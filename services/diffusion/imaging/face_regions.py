"""Face boxes of a pass, their paste masks and crops, and the size-dependent denoise (pure functions).

The boxes (and, from a landmark detector, five landmarks) come from ``PassSpec.faces`` in the pixels of
the pass's input image (the gateway runs the segmentation service's ``DetectFaces`` on that image). Faces
with landmarks are cut as aligned crops (:mod:`multipass_diffusion.imaging.face_align`); the box crops of
faces without them use the engine's geometry (:mod:`multipass_diffusion.imaging.crop_inpaint`); this
module only adds what is face-specific.
"""

from __future__ import annotations

import math

import numpy as np

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.imaging.crop_inpaint import Box, feather, fit_inside
from multipass_diffusion.imaging.face_align import (
    LANDMARK_COUNT,
    Alignment,
    align,
    border_alpha,
    context_points,
    face_side,
)

#: Fewest pixels between the two eye landmarks of a face that is aligned by them.
MIN_EYE_DISTANCE = 1.0

#: Dynamic denoise (ADetailer): strength * (1 - area_ratio) ** power, clamped to this range.
MIN_FACE_STRENGTH = 0.05
MAX_FACE_STRENGTH = 1.0


def dynamic_strength(
    strength: float,
    area_ratio: float,
    power: float,
    *,
    low: float = MIN_FACE_STRENGTH,
    high: float = MAX_FACE_STRENGTH,
) -> float:
    """Denoising strength for a face covering ``area_ratio`` of the image: smaller faces get more.

    ``strength * (1 - area_ratio) ** power``, clamped to ``low..high``; ``power`` 0 keeps ``strength``.
    """
    ratio = min(max(area_ratio, 0.0), 1.0)
    value = strength * (1.0 - ratio) ** max(power, 0.0)
    return float(min(max(value, low), high))


def face_box(face: diffusion_pb2.FaceTarget, size: tuple[int, int]) -> Box | None:
    """The face's box rounded outwards to pixels and clipped to the image; None when nothing is left."""
    width, height = size
    x0 = max(0, math.floor(face.box.x0))
    y0 = max(0, math.floor(face.box.y0))
    x1 = min(width, math.ceil(face.box.x1))
    y1 = min(height, math.ceil(face.box.y1))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1, y1)


def face_landmarks(face: diffusion_pb2.FaceTarget) -> np.ndarray | None:
    """The face's five landmarks as a (5, 2) array, or None when it has none (checked by check_faces)."""
    if not face.landmarks:
        return None
    return np.array([(point.x, point.y) for point in face.landmarks], dtype=np.float64)


def check_faces(spec: diffusion_pb2.PassSpec) -> None:
    problems = []
    for index, face in enumerate(spec.faces):
        box = face.box
        values = (box.x0, box.y0, box.x1, box.y1)
        if not all(math.isfinite(v) for v in values):
            problems.append(Violation(f"spec.faces[{index}].box", "has a non-finite coordinate"))
        elif box.x1 <= box.x0 or box.y1 <= box.y0:
            problems.append(
                Violation(
                    f"spec.faces[{index}].box",
                    f"got ({box.x0:g},{box.y0:g})-({box.x1:g},{box.y1:g}); expected x1 > x0 and y1 > y0",
                )
            )
        _check_landmarks(face, f"spec.faces[{index}].landmarks", problems)
    if problems:
        raise InvalidInput.of(problems)


def _check_landmarks(face: diffusion_pb2.FaceTarget, field: str, problems: list[Violation]) -> None:
    count = len(face.landmarks)
    if count == 0:
        return
    if count != LANDMARK_COUNT:
        problems.append(
            Violation(
                field, f"got {count} points; expected {LANDMARK_COUNT} (eyes, nose, mouth corners) or none"
            )
        )
        return
    points = [(p.x, p.y) for p in face.landmarks]
    if not all(math.isfinite(v) for point in points for v in point):
        problems.append(Violation(field, "has a non-finite coordinate"))
        return
    (lx, ly), (rx, ry) = points[0], points[1]
    if math.hypot(rx - lx, ry - ly) < MIN_EYE_DISTANCE:
        problems.append(
            Violation(
                field,
                f"the eyes ({lx:g},{ly:g}) and ({rx:g},{ry:g}) are less than {MIN_EYE_DISTANCE:g} pixel apart",
            )
        )


def rect_mask(size: tuple[int, int], box: Box) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[box.y0 : box.y1, box.x0 : box.x1] = 255
    return mask


def square_crop(box: Box, size: tuple[int, int], context: float) -> Box:
    """A square of ``context`` x the face box's long side around its centre, slid inside the image."""
    side = max(box.width, box.height) * context
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return fit_inside((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), size[0], size[1])


def ellipse_alpha(size: tuple[int, int], box: Box, crop: Box, *, sigma: float) -> np.ndarray:
    """Paste mask of a face: the ellipse inscribed in its box, feathered, zero outside ``crop`` (uint8).

    Computed inside ``crop`` only (which holds the whole box), so large images cost no more than small ones.
    """
    width, height = size
    ys, xs = np.mgrid[crop.y0 : crop.y1, crop.x0 : crop.x1].astype(np.float32)
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    rx, ry = max(box.width / 2, 0.5), max(box.height / 2, 0.5)
    inside = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[crop.y0 : crop.y1, crop.x0 : crop.x1] = feather(np.where(inside, 255, 0).astype(np.uint8), sigma)
    return alpha


def face_sigma(box: Box, mask_blur: float) -> float:
    """Feather of a restored or swapped face: ``spec.mask_blur`` when set, else 6% of its short side."""
    if mask_blur < 0:
        return 0.0
    if mask_blur > 0:
        return mask_blur
    return max(1.0, 0.06 * min(box.width, box.height))


def aligned_alpha(alignment: Alignment, box: Box, mask_blur: float, strength: float = 1.0) -> np.ndarray:
    """Paste alpha (crop pixels, float32 0..1) of an aligned face crop that is restored or swapped whole.

    The crop inset and feathered by :func:`face_sigma` (converted to crop pixels), so it fades to zero
    before the crop's border, weighted by ``strength``.
    """
    alpha = border_alpha(alignment.size, face_sigma(box, mask_blur) * alignment.scale)
    return alpha * np.float32(strength) if strength < 1.0 else alpha


def inpaint_alignment(
    landmarks: np.ndarray, work_side: int, *, padding: float, crop_factor: float, min_side: float
) -> tuple[Alignment, float]:
    """The aligned crop of a face to inpaint, and the side of the face's square in crop pixels.

    The face's square is its 112 ArcFace square (:func:`~multipass_diffusion.imaging.face_align.face_side`);
    the crop holds it grown by ``padding`` image pixels on each side, times ``crop_factor``, at least
    ``min_side`` image pixels wide, with the face upright in its centre, in ``work_side`` crop pixels.
    """
    side = face_side(landmarks)
    crop_side = max((side + 2.0 * padding) * crop_factor, min_side, side)
    context = crop_side / side
    return align(landmarks, work_side, context_points(work_side, context)), work_side / context
