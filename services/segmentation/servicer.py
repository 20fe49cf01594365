"""The thin ``multipass.v1.Segmentation`` servicer: object-store I/O and proto conversion.

Images are read from and masks written to the object store; the model work runs on the service's single
model thread (one per device), never on the event loop. Errors are raised, never returned: the shared
interceptor maps them to gRPC status codes with field violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from multipass.copies import CopyIndex, object_copy
from multipass.errors import InvalidInput, NotFound, Violation
from multipass.image_work import decode_image_async, encode_png_async
from multipass.model_catalog import features
from multipass.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc
from multipass_segmentation import mask_ops
from multipass_segmentation.faces import Face
from multipass_segmentation.metrics import EMPTY, IMAGE_COPIES, MASKS, SEGMENT_DURATION, SEGMENT_PHASE
from multipass_segmentation.segmenter import MaskOutput, Segmenter, TextMaskSpec
from multipass_segmentation.slots import MAX_PERSONS, Box, Keypoint, Slot

T = TypeVar("T")
#: zlib level of the masks and pose images written: 3-4x faster than level 6 for ~40% more bytes on
#: masks of a few KB (pixels identical).
OUTPUT_PNG_LEVEL = 1

SERVICE_NAME = "multipass.v1.Segmentation"
#: The largest object a response copies back (SegmentRequest / LayoutRequest ``copies_up_to_bytes``).
MAX_COPY_BYTES = 1024 * 1024


def model_features(model_dir: Path) -> features.Report:
    """The features of the model directory the segmentation service uses (``multipass models check``)."""
    return features.check(model_dir, services=[features.SEGMENTATION])


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServicer):
    def __init__(
        self,
        segmenter: Segmenter,
        store,
        executor: Executor,
        *,
        max_pixels: int,
        model_dir: Path | None = None,
    ):
        self.segmenter = segmenter
        self.store = store
        self.executor = executor
        self.max_pixels = max_pixels
        #: The model directory ``Info`` reports the features of (None: no features).
        self.model_dir = model_dir

    async def _run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # rpcs ----------------------------------------------------------------------------------------

    async def Segment(
        self, request: segmentation_pb2.SegmentRequest, context
    ) -> segmentation_pb2.SegmentResponse:
        started = time.perf_counter()
        kind = request.WhichOneof("kind")
        problems: list[Violation] = []
        if kind is None:
            problems.append(
                Violation("kind", "set either persons (one mask per slot) or text (a prompt mask)")
            )
        _check_ref(request.image, "image", problems)
        _check_prefix(request.output_prefix, problems)
        _check_copies(request.copies_up_to_bytes, problems)
        spec = None
        if kind == "text":
            spec = _text_spec(request.text, problems)
        if problems:
            raise InvalidInput.of(problems)
        if spec is not None:
            self.segmenter.check_text(spec, field="text")
        with phase(kind, "load"):
            image = await self._load_image(request.image, "image", copies=CopyIndex(request.copies))
        with phase(kind, "model"):
            if kind == "persons":
                slots = [slot_from_proto(s) for s in request.persons.slots]
                result = await self._run(self.segmenter.person_masks, image, slots, field="persons.slots")
            else:
                result = await self._run(self.segmenter.text_mask, image, spec, field="text")
        bucket = request.output_bucket or request.image.bucket
        with phase(kind, "store"):
            stored = await asyncio.gather(
                *(
                    self._store_mask(bucket, f"{request.output_prefix}mask-{m.label}.png", m)
                    for m in result.masks
                )
            )
        refs = [ref for ref, _data in stored]
        for output in result.masks:
            outcome = "fallback" if output.fallback else "empty" if output.empty else "segmented"
            MASKS.labels(kind=kind, outcome=outcome).inc()
            if output.empty:
                EMPTY.inc()
        SEGMENT_DURATION.labels(kind=kind).observe(time.perf_counter() - started)
        return segmentation_pb2.SegmentResponse(
            masks=[_mask_result(m, ref) for m, ref in zip(result.masks, refs, strict=True)],
            warnings=result.warnings,
            copies=copies_of(stored, request.copies_up_to_bytes),
        )

    async def Layout(
        self, request: segmentation_pb2.LayoutRequest, context
    ) -> segmentation_pb2.LayoutResponse:
        started = time.perf_counter()
        problems: list[Violation] = []
        has_image = request.HasField("image")
        if has_image:
            _check_ref(request.image, "image", problems)
        _check_copies(request.copies_up_to_bytes, problems)
        if request.output_key:
            _check_key(request.output_key, "output_key", problems)
            if request.content_addressed and not request.output_key.endswith("/"):
                problems.append(
                    Violation(
                        "output_key",
                        f"got {request.output_key!r}; with content_addressed a prefix ending in '/'",
                    )
                )
            if not (request.output_bucket or (has_image and request.image.bucket)):
                problems.append(
                    Violation(
                        "output_bucket",
                        "is required to store the pose image when no input image gives a bucket",
                    )
                )
        if problems:
            raise InvalidInput.of(problems)
        image = None
        width, height = request.width, request.height
        if has_image:
            with phase("layout", "load"):
                image = await self._load_image(request.image, "image")
            img_height, img_width = image.shape[:2]
            if (width and width != img_width) or (height and height != img_height):
                raise InvalidInput.of(
                    [
                        Violation(
                            "width",
                            f"got {width}x{height}; the image is {img_width}x{img_height} (leave 0 to use its size)",
                        )
                    ]
                )
            width, height = img_width, img_height
        with phase("layout", "model"):
            result = await self._run(self.segmenter.layout, width, height, request.count, image)
        response = segmentation_pb2.LayoutResponse(
            slots=[_slot_to_proto(s) for s in result.slots], source=result.source, warnings=result.warnings
        )
        if request.output_key:
            if any(s.keypoints for s in result.slots):
                with phase("layout", "model"):
                    pose = await self._run(self.segmenter.render_pose, width, height, result.slots)
                bucket = request.output_bucket or request.image.bucket
                key = request.output_key
                with phase("layout", "store"):
                    stored = await self._store_png(
                        bucket, key, Image.fromarray(pose, "RGB"), content_addressed=request.content_addressed
                    )
                response.pose_image.CopyFrom(stored[0])
                response.copies.extend(copies_of([stored], request.copies_up_to_bytes))
            else:
                response.warnings.append(
                    "no pose image: detected slots carry no keypoints (no pose is estimated)"
                )
        SEGMENT_DURATION.labels(kind="layout").observe(time.perf_counter() - started)
        return response

    async def DetectFaces(
        self, request: segmentation_pb2.DetectFacesRequest, context
    ) -> segmentation_pb2.DetectFacesResponse:
        started = time.perf_counter()
        problems: list[Violation] = []
        _check_ref(request.image, "image", problems)
        seen: set[int] = set()
        for i, person in enumerate(request.person_masks):
            _check_ref(person.mask, f"person_masks[{i}].mask", problems)
            if not 0 <= person.index < MAX_PERSONS:
                problems.append(
                    Violation(
                        f"person_masks[{i}].index", f"got {person.index}; expected 0..{MAX_PERSONS - 1}"
                    )
                )
            elif person.index in seen:
                problems.append(Violation(f"person_masks[{i}].index", f"slot {person.index} appears twice"))
            seen.add(person.index)
        if problems:
            raise InvalidInput.of(problems)
        with phase("faces", "load"):
            image = await self._load_image(request.image, "image")
            loaded = await asyncio.gather(
                *(
                    self._load_mask(p.mask, f"person_masks[{i}].mask", image.shape[:2])
                    for i, p in enumerate(request.person_masks)
                )
            )
        masks: list[np.ndarray | None] = [None] * (max(seen) + 1 if seen else 0)
        for person, mask in zip(request.person_masks, loaded, strict=True):
            masks[person.index] = mask
        with phase("faces", "model"):
            faces = await self._run(self.segmenter.detect_faces, image, masks)
        SEGMENT_DURATION.labels(kind="faces").observe(time.perf_counter() - started)
        return segmentation_pb2.DetectFacesResponse(faces=[_face_to_proto(f) for f in faces])

    async def Info(  # noqa: N802
        self, request: segmentation_pb2.SegmentationInfoRequest, context
    ) -> segmentation_pb2.SegmentationInfoResponse:
        report = model_features(self.model_dir) if self.model_dir is not None else None
        return segmentation_pb2.SegmentationInfoResponse(
            features=features.to_proto(report) if report is not None else [],
            device=str(self.segmenter.models.device),
        )

    # object store --------------------------------------------------------------------------------

    async def _load_image(
        self, ref: common_pb2.ImageRef, field: str, copies: CopyIndex | None = None
    ) -> np.ndarray:
        """The image ``ref`` names, from a copy the request carried when one is that object."""
        if copies:
            data = copies.matching(ref)
            IMAGE_COPIES.labels(outcome="miss" if data is None else "hit").inc()
            if data is not None:
                image = await decode_image_async(data, field=field, max_pixels=self.max_pixels, mode="RGB")
                return np.asarray(image)
        try:
            image = await self.store.get_image(ref, field=field, max_pixels=self.max_pixels, mode="RGB")
        except NotFound as error:
            raise NotFound(
                f"{field} {ref.bucket}/{ref.key} does not exist", violations=[Violation(field, str(error))]
            ) from error
        return np.asarray(image)

    async def _load_mask(self, ref: common_pb2.ImageRef, field: str, shape: tuple[int, int]) -> np.ndarray:
        try:
            image = await self.store.get_image(ref, field=field, max_pixels=self.max_pixels, mode="L")
        except NotFound as error:
            raise NotFound(
                f"{field} {ref.bucket}/{ref.key} does not exist", violations=[Violation(field, str(error))]
            ) from error
        if (image.height, image.width) != tuple(shape):
            raise InvalidInput.of(
                [Violation(field, f"is {image.width}x{image.height}; the image is {shape[1]}x{shape[0]}")]
            )
        return mask_ops.as_mask(np.asarray(image))

    async def _store_mask(
        self, bucket: str, key: str, output: MaskOutput
    ) -> tuple[common_pb2.ImageRef, bytes]:
        return await self._store_png(bucket, key, Image.fromarray(mask_ops.to_uint8(output.mask), "L"))

    async def _store_png(
        self, bucket: str, key: str, image: Image.Image, *, content_addressed: bool = False
    ) -> tuple[common_pb2.ImageRef, bytes]:
        """Encode and store ``image``; its reference and the bytes stored. ``content_addressed``: ``key``
        is a prefix, completed with the PNG's sha256."""
        data = await encode_png_async(image, OUTPUT_PNG_LEVEL)
        if content_addressed:
            key = f"{key}{hashlib.sha256(data).hexdigest()}.png"
        try:
            ref = await self.store.put_png(bucket, key, data, width=image.width, height=image.height)
            return ref, data
        except NotFound as error:
            raise NotFound(
                str(error), violations=[Violation("output_bucket", f"bucket {bucket} does not exist")]
            ) from error


@contextlib.contextmanager
def phase(kind: str, name: str) -> Iterator[None]:
    """Observe the seconds of the block under ``multipass_segment_phase_seconds{kind, phase}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SEGMENT_PHASE.labels(kind=kind, phase=name).observe(time.perf_counter() - started)


# conversion --------------------------------------------------------------------------------------


def _check_copies(limit: int, problems: list[Violation]) -> None:
    if not 0 <= limit <= MAX_COPY_BYTES:
        problems.append(
            Violation("copies_up_to_bytes", f"got {limit}; expected 0..{MAX_COPY_BYTES} (0 = no copies)")
        )


def copies_of(stored: list[tuple[common_pb2.ImageRef, bytes]], limit: int) -> list[common_pb2.ObjectCopy]:
    """Copies of the stored objects of at most ``limit`` bytes (none when ``limit`` is 0)."""
    return [object_copy(ref, data) for ref, data in stored if 0 < len(data) <= limit]


def _check_ref(ref: common_pb2.ImageRef, field: str, problems: list[Violation]) -> None:
    if not ref.bucket or not ref.key:
        problems.append(Violation(field, "needs a bucket and a key"))


def _check_key(key: str, field: str, problems: list[Violation]) -> None:
    if key.startswith("/") or ".." in key.split("/") or any(ord(c) < 32 for c in key) or len(key) > 900:
        problems.append(
            Violation(field, f"got {key!r}; a relative object key without '..' or control characters")
        )


def _check_prefix(prefix: str, problems: list[Violation]) -> None:
    if not prefix:
        problems.append(Violation("output_prefix", "is required, e.g. 'jobs/<tenant>/<job>/image-0/'"))
        return
    _check_key(prefix, "output_prefix", problems)


def _text_spec(text: segmentation_pb2.TextMaskRequest, problems: list[Violation]) -> TextMaskSpec | None:
    dilation = None
    which = text.WhichOneof("dilate")
    if which == "dilate_pixels":
        if abs(text.dilate_pixels) > 4096:
            problems.append(
                Violation("text.dilate_pixels", f"got {text.dilate_pixels}; expected -4096..4096")
            )
        dilation = mask_ops.Dilation(text.dilate_pixels)
    elif which == "dilate_percent":
        if not -100 <= text.dilate_percent <= 100:
            problems.append(
                Violation("text.dilate_percent", f"got {text.dilate_percent:g}; expected -100..100")
            )
        dilation = mask_ops.Dilation(text.dilate_percent, percent=True)
    return TextMaskSpec(
        prompt=text.prompt,
        negative=text.negative,
        invert=text.invert,
        dilation=dilation,
        box_threshold=text.box_threshold,
        text_threshold=text.text_threshold,
    )


def slot_from_proto(slot: segmentation_pb2.Slot) -> Slot:
    box = Box(slot.box.x0, slot.box.y0, slot.box.x1, slot.box.y1)
    keypoints = tuple(Keypoint(k.index, k.x, k.y, k.confidence) for k in slot.keypoints)
    return Slot(slot.index, box, keypoints)


def _box_to_proto(box: Box | tuple[float, float, float, float] | None) -> common_pb2.Box:
    if box is None:
        return common_pb2.Box()
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, Box) else box
    return common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def _face_to_proto(face: Face) -> segmentation_pb2.Face:
    return segmentation_pb2.Face(
        box=_box_to_proto(face.box),
        score=face.score,
        slot_index=face.slot_index,
        landmarks=[common_pb2.Point(x=x, y=y) for x, y in face.landmarks],
    )


def _slot_to_proto(slot: Slot) -> segmentation_pb2.Slot:
    return segmentation_pb2.Slot(
        index=slot.index,
        box=_box_to_proto(slot.box),
        keypoints=[
            common_pb2.Keypoint(index=k.index, x=k.x, y=k.y, confidence=k.confidence) for k in slot.keypoints
        ],
    )


def _mask_result(output: MaskOutput, ref: common_pb2.ImageRef) -> segmentation_pb2.MaskResult:
    return segmentation_pb2.MaskResult(
        index=output.index,
        mask=ref,
        box=_box_to_proto(output.box),
        score=output.score,
        label=output.label,
        fallback=output.fallback,
        area_fraction=output.area_fraction,
    )
