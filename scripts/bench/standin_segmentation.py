"""A stand-in segmentation service whose answers are instant, for measuring the control plane alone.

``python -m multipass_bench.standin_segmentation`` serves the real ``multipass.v1.Segmentation`` API on
``MULTIPASS_BENCH_STANDIN_SEGMENTATION_GRPC_ADDR`` without running a model, so that the control-plane bench
counts the gateway's orchestration and not the segmentation model's CPU time (which cost as much as the
gateway itself and was the longest stage of each job):

* ``Layout``: the service's own default layout (:func:`multipass_segmentation.slots.default_layout`), so
  slots and keypoints are exactly what the real service answers for an image without an input picture;
  the pose image is rendered and stored when asked for.
* ``Segment`` with persons: one mask per slot, in slot order, each the slot's box minus the boxes of the
  slots before it (so masks never overlap), the image's size, with tight box and area fraction.
* ``Segment`` with text: one centred mask labelled ``prompt``.
* ``DetectFaces``: no faces (the gateway then completes the pass with the image unchanged).

Masks do not depend on the image's pixels, only on its size and the slot boxes, so each distinct set is
encoded and stored once (under ``bench/standin-masks/``), at start-up for the default layouts of 1..4
persons at ``MULTIPASS_BENCH_STANDIN_SIZE`` (default 256) and on first use for any other; later requests
return the stored references without any object-store I/O. Requests are validated as the real service
validates them (INVALID_ARGUMENT with field violations). Settings: ``MULTIPASS_S3_*``,
``MULTIPASS_BENCH_STANDIN_SEGMENTATION_GRPC_ADDR``, ``MULTIPASS_BENCH_STANDIN_SIZE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys

import numpy as np
from PIL import Image

from multipass.config import EnvReader
from multipass.connections import S3Settings
from multipass.errors import InvalidInput, Violation
from multipass.grpc.server import Registration, start_grpc_server
from multipass.names import OBJECT_BUCKETS
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc

log = logging.getLogger("multipass_bench.standin_segmentation")
SERVICE_NAME = "multipass.v1.Segmentation"
MASK_PREFIX = "bench/standin-masks/"
MAX_SLOTS = 16
#: Default layouts whose masks are stored at start-up.
WARM_PERSON_COUNTS = (1, 2, 3, 4)

Boxes = tuple[tuple[int, int, int, int], ...]


def slot_masks(width: int, height: int, boxes: Boxes) -> list[np.ndarray]:
    """One boolean mask per box: the box (pixel-rounded, clipped) minus every earlier mask."""
    taken = np.zeros((height, width), dtype=bool)
    masks = []
    for x0, y0, x1, y1 in boxes:
        mask = np.zeros((height, width), dtype=bool)
        mask[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = True
        mask &= ~taken
        taken |= mask
        masks.append(mask)
    return masks


def tight_box(mask: np.ndarray) -> common_pb2.Box:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return common_pb2.Box()
    return common_pb2.Box(
        x0=float(xs.min()), y0=float(ys.min()), x1=float(xs.max() + 1), y1=float(ys.max() + 1)
    )


def _pixel_box(box: common_pb2.Box) -> tuple[int, int, int, int]:
    return (int(round(box.x0)), int(round(box.y0)), int(round(box.x1)), int(round(box.y1)))


class MaskBank:
    """Stored masks by (size, boxes): each distinct set is encoded and written once, then reused."""

    def __init__(self, store, bucket: str):
        self.store = store
        self.bucket = bucket
        self._sets: dict[tuple[int, int, Boxes], asyncio.Future] = {}
        self.stored = 0

    async def masks(
        self, width: int, height: int, boxes: Boxes, labels: list[str]
    ) -> list[segmentation_pb2.MaskResult]:
        key = (width, height, boxes)
        pending = self._sets.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._store(width, height, boxes))
            self._sets[key] = pending
        try:
            stored = await asyncio.shield(pending)
        except Exception:
            self._sets.pop(key, None)  # a failed write is tried again by the next request
            raise
        return [
            segmentation_pb2.MaskResult(
                index=index,
                mask=ref,
                box=box,
                score=1.0,
                label=label,
                fallback=False,
                area_fraction=area,
            )
            for index, ((ref, box, area), label) in enumerate(zip(stored, labels, strict=True))
        ]

    async def _store(
        self, width: int, height: int, boxes: Boxes
    ) -> list[tuple[common_pb2.ImageRef, common_pb2.Box, float]]:
        digest = hashlib.sha256(repr((width, height, boxes)).encode()).hexdigest()[:16]
        masks = slot_masks(width, height, boxes)
        refs = await asyncio.gather(
            *(
                self.store.put_image(
                    self.bucket,
                    f"{MASK_PREFIX}{width}x{height}-{digest}-{i}.png",
                    Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0)), "L"),
                )
                for i, mask in enumerate(masks)
            )
        )
        self.stored += len(masks)
        return [(ref, tight_box(mask), float(mask.mean())) for ref, mask in zip(refs, masks, strict=True)]


class StandInSegmentation(segmentation_pb2_grpc.SegmentationServicer):
    def __init__(self, store, bucket: str):
        self.store = store
        self.bank = MaskBank(store, bucket)

    async def warm(self, size: int) -> None:
        """Store the masks of the default layouts of 1..4 persons on a ``size`` square image."""
        from multipass_segmentation.slots import default_layout

        for count in WARM_PERSON_COUNTS:
            slots = default_layout(size, size, count)
            boxes = tuple(_pixel_box(_slot_to_proto(s).box) for s in slots)
            await self.bank.masks(size, size, boxes, [f"person-{i}" for i in range(count)])

    async def Segment(self, request, context) -> segmentation_pb2.SegmentResponse:
        kind = request.WhichOneof("kind")
        problems: list[Violation] = []
        if kind is None:
            problems.append(
                Violation("kind", "set either persons (one mask per slot) or text (a prompt mask)")
            )
        if not request.image.bucket or not request.image.key:
            problems.append(Violation("image", "needs a bucket and a key"))
        if not request.output_prefix:
            problems.append(Violation("output_prefix", "is required, e.g. 'jobs/<tenant>/<job>/image-0/'"))
        width, height = await self._size(request.image) if not problems else (0, 0)
        if kind == "persons":
            slots = request.persons.slots
            if not 1 <= len(slots) <= MAX_SLOTS:
                problems.append(
                    Violation("persons.slots", f"got {len(slots)} slots; expected 1..{MAX_SLOTS}")
                )
            for i, slot in enumerate(slots):
                box = slot.box
                if slot.index != i:
                    problems.append(Violation(f"persons.slots[{i}].index", f"got {slot.index}; expected {i}"))
                if not (0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height):
                    problems.append(
                        Violation(
                            f"persons.slots[{i}].box", f"must have area and lie inside {width}x{height}"
                        )
                    )
        elif kind == "text" and not request.text.prompt.strip():
            problems.append(Violation("text.prompt", "is required"))
        if problems:
            raise InvalidInput.of(problems)
        if kind == "persons":
            boxes = tuple(_pixel_box(slot.box) for slot in request.persons.slots)
            labels = [f"person-{i}" for i in range(len(boxes))]
        else:
            boxes = ((width // 4, height // 4, width - width // 4, height - height // 4),)
            labels = ["prompt"]
        masks = await self.bank.masks(width, height, boxes, labels)
        return segmentation_pb2.SegmentResponse(masks=masks)

    async def Layout(self, request, context) -> segmentation_pb2.LayoutResponse:
        from multipass_segmentation.slots import default_layout

        width, height = request.width, request.height
        if request.HasField("image"):
            width, height = await self._size(request.image)
        if not request.count:
            raise InvalidInput.of([Violation("count", "the stand-in lays out a given number of persons")])
        slots = default_layout(width, height, request.count)
        response = segmentation_pb2.LayoutResponse(slots=[_slot_to_proto(s) for s in slots], source="default")
        if request.output_key:
            from multipass_segmentation.pose_render import render_pose

            pose = await asyncio.to_thread(render_pose, width, height, slots)
            bucket = request.output_bucket or request.image.bucket
            response.pose_image.CopyFrom(
                await self.store.put_image(bucket, request.output_key, Image.fromarray(pose, "RGB"))
            )
        return response

    async def DetectFaces(self, request, context) -> segmentation_pb2.DetectFacesResponse:
        if not request.image.bucket or not request.image.key:
            raise InvalidInput.of([Violation("image", "needs a bucket and a key")])
        return segmentation_pb2.DetectFacesResponse()

    async def _size(self, ref: common_pb2.ImageRef) -> tuple[int, int]:
        """The image's size from its reference (every stored reference carries it), else from the image."""
        if ref.width > 0 and ref.height > 0:
            return ref.width, ref.height
        image = await self.store.get_image(ref, field="image")
        return image.width, image.height


def _slot_to_proto(slot) -> segmentation_pb2.Slot:
    x0, y0, x1, y1 = slot.box.as_tuple()
    return segmentation_pb2.Slot(
        index=slot.index,
        box=common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1),
        keypoints=[
            common_pb2.Keypoint(index=k.index, x=k.x, y=k.y, confidence=k.confidence) for k in slot.keypoints
        ],
    )


async def serve(environ=None) -> None:
    reader = EnvReader(environ)
    s3 = S3Settings.from_env(reader)
    address = reader.address("BENCH_STANDIN_SEGMENTATION_GRPC_ADDR", "127.0.0.1:0")
    size = reader.int("BENCH_STANDIN_SIZE", 256, min=8, max=4096)
    reader.check()
    store = ObjectStore.from_settings(s3)
    await store.ensure_buckets(OBJECT_BUCKETS)
    servicer = StandInSegmentation(store, "multipass-jobs")
    await servicer.warm(size)
    server = await start_grpc_server(
        address,
        [Registration(segmentation_pb2_grpc.add_SegmentationServicer_to_server, servicer, SERVICE_NAME)],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("stand-in segmentation serving on %s (%d masks stored)", server.address, servicer.bank.stored)
    try:
        await stop.wait()
    finally:
        log.info("stand-in segmentation stopping (%d masks stored)", servicer.bank.stored)
        with contextlib.suppress(Exception):
            await server.stop(1.0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
