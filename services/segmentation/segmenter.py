"""The segmentation domain facade: person masks, text masks, layouts and faces on numpy images.

No gRPC, no object store: images come in as RGB ``uint8`` arrays, masks go out as boolean arrays. Calls
are blocking (models run here); the server runs them on its model thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from multipass.errors import InvalidInput, Violation
from multipass_segmentation import mask_ops
from multipass_segmentation.faces import Face, assign_to_slots
from multipass_segmentation.grounding import Detection, split_phrases
from multipass_segmentation.models import SegmentationModels
from multipass_segmentation.person_masks import PersonMaskOptions, person_masks
from multipass_segmentation.pose_render import render_pose
from multipass_segmentation.sam_masks import SamEngine
from multipass_segmentation.slots import (
    MAX_PERSONS,
    Box,
    Slot,
    check_slots,
    complete_layout,
    default_layout,
    slots_from_boxes,
)

log = logging.getLogger(__name__)

#: Phrases the face detector answers (when enabled); "head" grows the face box to the whole head.
FACE_PHRASES = frozenset({"face", "faces"})
HEAD_PHRASES = frozenset({"head", "heads"})
#: Longest prompt or negative text, in characters (keeps the detector's token budget of 256).
MAX_PROMPT_CHARS = 240
#: A SAM mask for a detected box is clipped to the box grown by this fraction on each side.
BOX_CLIP_MARGIN = 0.1


@dataclass(frozen=True)
class TextMaskSpec:
    """What a text mask asks for; thresholds of 0 mean the service defaults."""

    prompt: str
    negative: str = ""
    invert: bool = False
    dilation: mask_ops.Dilation | None = None
    box_threshold: float = 0.0
    text_threshold: float = 0.0


@dataclass(frozen=True)
class MaskOutput:
    index: int
    label: str
    mask: np.ndarray
    score: float
    fallback: bool = False
    #: True when nothing was segmented (an empty prompt mask, or a slot that fell back).
    empty: bool = False

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        return mask_ops.bounding_box(self.mask)

    @property
    def area_fraction(self) -> float:
        return mask_ops.area_fraction(self.mask)


@dataclass(frozen=True)
class SegmentResult:
    masks: list[MaskOutput]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayoutResult:
    slots: list[Slot]
    #: "detected" (from persons in the image) or "default" (evenly spaced figures).
    source: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SegmenterOptions:
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    embedding_cache: int = 8
    person: PersonMaskOptions = PersonMaskOptions()
    face_min_overlap: float = 0.1
    face_phrases: bool = True


class Segmenter:
    def __init__(self, models: SegmentationModels, options: SegmenterOptions = SegmenterOptions()):
        self.models = models
        self.options = options
        self.sam = SamEngine(models.sam, cache_size=options.embedding_cache)

    def warm_up(self) -> None:
        """Run SAM and the face detector once on a small image (first calls are slow on most devices); the
        cache stays empty."""
        image = np.full((64, 64, 3), 127, dtype=np.uint8)
        embedding = self.sam.embed(image)
        self.sam.predict(embedding, box=(8.0, 8.0, 56.0, 56.0))
        self.sam.clear()
        self.models.faces.detect(image)

    # person masks ------------------------------------------------------------------------------

    def person_masks(
        self, image: np.ndarray, slots: Sequence[Slot], *, field: str = "persons.slots"
    ) -> SegmentResult:
        """Exactly one mask per slot, in slot order (see :mod:`multipass_segmentation.person_masks`)."""
        height, width = image.shape[:2]
        check_slots(slots, width, height, field=field)
        embedding = self.sam.embed(image)
        masks, warnings = person_masks(self.sam, embedding, slots, self.options.person)
        outputs = [
            MaskOutput(m.index, f"person-{m.index}", m.mask, m.score, fallback=m.fallback, empty=m.fallback)
            for m in masks
        ]
        return SegmentResult(outputs, warnings)

    # text masks --------------------------------------------------------------------------------

    def check_text(self, spec: TextMaskSpec, *, field: str = "text") -> None:
        problems: list[Violation] = []
        if not split_phrases(spec.prompt):
            problems.append(
                Violation(f"{field}.prompt", "is empty; name what to mask, e.g. 'face' or 'red shirt'")
            )
        for name, value in (("prompt", spec.prompt), ("negative", spec.negative)):
            if len(value) > MAX_PROMPT_CHARS:
                problems.append(
                    Violation(f"{field}.{name}", f"is {len(value)} characters; at most {MAX_PROMPT_CHARS}")
                )
        for name, value in (("box_threshold", spec.box_threshold), ("text_threshold", spec.text_threshold)):
            if not 0.0 <= value <= 1.0:
                problems.append(
                    Violation(f"{field}.{name}", f"got {value:g}; expected 0..1 (0 = service default)")
                )
        if spec.dilation is not None and spec.dilation.percent and abs(spec.dilation.amount) > 100:
            problems.append(
                Violation(f"{field}.dilate_percent", f"got {spec.dilation.amount:g}; expected -100..100")
            )
        if problems:
            raise InvalidInput.of(problems)

    def text_mask(self, image: np.ndarray, spec: TextMaskSpec, *, field: str = "text") -> SegmentResult:
        """``seg(prompt) - seg(negative)`` -> dilate/erode -> invert, as one mask labelled ``prompt``."""
        self.check_text(spec, field=field)
        box_threshold = spec.box_threshold or self.options.box_threshold
        text_threshold = spec.text_threshold or self.options.text_threshold
        warnings: list[str] = []
        positive, score = self._segment_phrases(
            image, split_phrases(spec.prompt), box_threshold, text_threshold, warnings
        )
        negative = None
        if split_phrases(spec.negative):
            negative, _ = self._segment_phrases(
                image, split_phrases(spec.negative), box_threshold, text_threshold, warnings
            )
        result = mask_ops.prompt_mask(positive, negative, dilation=spec.dilation, invert_result=spec.invert)
        empty = result.empty_before_ops or result.vanished
        if result.empty_before_ops:
            warnings.append(
                f"nothing segmented for prompt {spec.prompt!r}"
                + (f" minus {spec.negative!r}" if negative is not None else "")
            )
        if result.vanished:
            warnings.append(f"the mask vanished after erosion by {spec.dilation}")
        return SegmentResult([MaskOutput(0, "prompt", result.mask, score, empty=empty)], warnings)

    def _segment_phrases(
        self,
        image: np.ndarray,
        phrases: list[str],
        box_threshold: float,
        text_threshold: float,
        warnings: list[str],
    ) -> tuple[np.ndarray, float]:
        """Union over phrases of the union of one SAM mask per detected box; the best detection score."""
        shape = image.shape[:2]
        detections: list[Detection] = []
        grounded = []
        for phrase in phrases:
            faces = self._face_boxes(image, phrase) if self.options.face_phrases else []
            if faces:
                detections += faces
            else:
                grounded.append(phrase)
        if grounded:
            detections += self.models.detector.detect(image, grounded, box_threshold, text_threshold)
        for phrase in phrases:
            if not any(d.phrase == phrase for d in detections):
                warnings.append(f"no box found for {phrase!r}")
        if not detections:
            return np.zeros(shape, dtype=bool), 0.0
        embedding = self.sam.embed(image)
        predicted = self.sam.predict_boxes(embedding, [d.box.as_tuple() for d in detections])
        union = np.zeros(shape, dtype=bool)
        for detection, sam_mask in zip(detections, predicted, strict=True):
            union |= sam_mask.mask & mask_ops.box_mask(
                shape, _grow(detection.box, BOX_CLIP_MARGIN).as_tuple()
            )
        return union, max(d.score for d in detections)

    def _face_boxes(self, image: np.ndarray, phrase: str) -> list[Detection]:
        if phrase not in FACE_PHRASES and phrase not in HEAD_PHRASES:
            return []
        height, width = image.shape[:2]
        detections = []
        for face in self.models.faces.detect(image):
            box = face.box
            if phrase in HEAD_PHRASES:
                box = Box(
                    box.x0 - 0.25 * box.width,
                    box.y0 - 0.6 * box.height,
                    box.x1 + 0.25 * box.width,
                    box.y1 + 0.2 * box.height,
                ).clipped(width, height)
            detections.append(Detection(phrase, box, face.score))
        return detections

    # layout ------------------------------------------------------------------------------------

    def layout(self, width: int, height: int, count: int, image: np.ndarray | None = None) -> LayoutResult:
        """Slots for ``count`` persons (exactly ``count`` when > 0), left to right.

        Without an image: the default layout. With one: the ``count`` best person detections (every one
        when ``count`` is 0); missing persons get default figures in the columns no detection took, and
        when none is found the whole default layout stands in (source "default").
        """
        if image is None:
            return LayoutResult(default_layout(width, height, count), "default")
        img_height, img_width = image.shape[:2]
        if count < 0 or count > MAX_PERSONS:
            raise InvalidInput.of(
                [
                    Violation(
                        "count",
                        f"got {count}; expected 0..{MAX_PERSONS} with an image (0 = every person found)",
                    )
                ]
            )
        found = self.models.detector.detect(
            image, ["person"], self.options.box_threshold, self.options.text_threshold
        )
        slots = slots_from_boxes(
            [d.box for d in found], [d.score for d in found], img_width, img_height, count or MAX_PERSONS
        )
        if count == 0:
            return LayoutResult(slots, "detected", [] if slots else ["no person found in the image"])
        if not slots:
            return LayoutResult(
                default_layout(img_width, img_height, count),
                "default",
                [f"no person found in the image; {count} default figures stand in"],
            )
        warnings = []
        if len(slots) < count:
            missing = count - len(slots)
            warnings.append(
                f"found {len(slots)} of {count} persons in the image; "
                f"{missing} default figure{'s' if missing > 1 else ''} stand{'' if missing > 1 else 's'} in"
            )
            slots = complete_layout(slots, img_width, img_height, count)
        return LayoutResult(slots, "detected", warnings)

    def render_pose(self, width: int, height: int, slots: Sequence[Slot]) -> np.ndarray:
        return render_pose(width, height, slots)

    # faces -------------------------------------------------------------------------------------

    def detect_faces(self, image: np.ndarray, masks: Sequence[np.ndarray | None] = ()) -> list[Face]:
        """Faces left to right, each with the slot whose mask holds most of it (-1 when none)."""
        faces = self.models.faces.detect(image)
        return assign_to_slots(faces, masks, self.options.face_min_overlap)


def _grow(box: Box, margin: float) -> Box:
    dx, dy = margin * box.width, margin * box.height
    return Box(box.x0 - dx, box.y0 - dy, box.x1 + dx, box.y1 + dy)
