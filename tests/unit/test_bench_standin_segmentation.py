"""The control-plane bench's stand-in segmentation: real API shapes, per-slot masks stored once."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from multipass.errors import InvalidInput
from multipass.v1 import common_pb2, segmentation_pb2
from multipass_bench.standin_segmentation import StandInSegmentation, slot_masks


class MemoryStore:
    """Stores PNGs in memory and counts writes (the ObjectStore calls the stand-in makes)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.writes = 0

    async def put_image(self, bucket: str, key: str, image: Image.Image) -> common_pb2.ImageRef:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.objects[(bucket, key)] = buffer.getvalue()
        self.writes += 1
        return common_pb2.ImageRef(bucket=bucket, key=key, width=image.width, height=image.height)

    def image(self, ref: common_pb2.ImageRef) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.objects[(ref.bucket, ref.key)])))


IMAGE = common_pb2.ImageRef(bucket="multipass-jobs", key="jobs/t/j/image-0/base.png", width=256, height=192)


def persons_request(slots) -> segmentation_pb2.SegmentRequest:
    request = segmentation_pb2.SegmentRequest(image=IMAGE, output_prefix="jobs/t/j/image-0/")
    request.persons.slots.extend(slots)
    return request


def layout(servicer, count: int) -> segmentation_pb2.LayoutResponse:
    return asyncio.run(
        servicer.Layout(
            segmentation_pb2.LayoutRequest(width=IMAGE.width, height=IMAGE.height, count=count), None
        )
    )


def test_person_masks_are_per_slot_disjoint_image_sized_and_inside_their_boxes():
    store = MemoryStore()
    servicer = StandInSegmentation(store, "multipass-jobs")
    slots = layout(servicer, 2).slots
    assert [s.index for s in slots] == [0, 1] and all(len(s.keypoints) == 18 for s in slots)
    response = asyncio.run(servicer.Segment(persons_request(slots), None))
    assert [m.label for m in response.masks] == ["person-0", "person-1"]
    assert [m.index for m in response.masks] == [0, 1]
    pixels = [store.image(m.mask) > 127 for m in response.masks]
    for mask, result, slot in zip(pixels, response.masks, slots, strict=True):
        assert mask.shape == (IMAGE.height, IMAGE.width)
        assert (result.mask.width, result.mask.height) == (IMAGE.width, IMAGE.height)
        assert mask.any() and result.area_fraction == pytest.approx(mask.mean())
        ys, xs = np.nonzero(mask)
        assert slot.box.x0 - 1 <= xs.min() and xs.max() < slot.box.x1 + 1
        assert (result.box.x0, result.box.x1) == (xs.min(), xs.max() + 1)
    assert not (pixels[0] & pixels[1]).any()


def test_masks_are_stored_once_and_reused_by_later_requests():
    store = MemoryStore()
    servicer = StandInSegmentation(store, "multipass-jobs")
    slots = layout(servicer, 2).slots
    first = asyncio.run(servicer.Segment(persons_request(slots), None))
    writes = store.writes
    second = asyncio.run(servicer.Segment(persons_request(slots), None))
    assert writes == 2 and store.writes == 2
    assert [m.mask.key for m in first.masks] == [m.mask.key for m in second.masks]
    three = asyncio.run(servicer.Segment(persons_request(layout(servicer, 3).slots), None))
    assert len(three.masks) == 3 and store.writes == 5


def test_warm_up_stores_the_default_layouts_so_requests_write_nothing():
    store = MemoryStore()
    servicer = StandInSegmentation(store, "multipass-jobs")
    asyncio.run(servicer.warm(256))
    warmed = store.writes
    assert warmed == 1 + 2 + 3 + 4
    square = common_pb2.ImageRef(bucket="multipass-jobs", key="x.png", width=256, height=256)
    slots = asyncio.run(
        servicer.Layout(segmentation_pb2.LayoutRequest(width=256, height=256, count=2), None)
    ).slots
    request = segmentation_pb2.SegmentRequest(image=square, output_prefix="p/")
    request.persons.slots.extend(slots)
    assert len(asyncio.run(servicer.Segment(request, None)).masks) == 2
    assert store.writes == warmed


def test_requests_are_validated_like_the_real_service():
    servicer = StandInSegmentation(MemoryStore(), "multipass-jobs")
    outside = segmentation_pb2.Slot(index=0, box=common_pb2.Box(x0=10, y0=10, x1=300, y1=100))
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(servicer.Segment(persons_request([outside]), None))
    assert [v.field for v in caught.value.violations] == ["persons.slots[0].box"]
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(servicer.Segment(segmentation_pb2.SegmentRequest(image=IMAGE), None))
    assert {v.field for v in caught.value.violations} == {"kind", "output_prefix"}


def test_text_masks_and_faces_answer_in_the_api_shape():
    servicer = StandInSegmentation(MemoryStore(), "multipass-jobs")
    request = segmentation_pb2.SegmentRequest(image=IMAGE, output_prefix="p/")
    request.text.prompt = "red shirt"
    response = asyncio.run(servicer.Segment(request, None))
    assert [m.label for m in response.masks] == ["prompt"] and 0 < response.masks[0].area_fraction < 1
    faces = asyncio.run(servicer.DetectFaces(segmentation_pb2.DetectFacesRequest(image=IMAGE), None))
    assert list(faces.faces) == []


def test_slot_masks_clip_to_the_image_and_never_overlap():
    masks = slot_masks(10, 8, ((0, 0, 6, 8), (4, 0, 12, 8)))
    assert masks[0].sum() == 6 * 8 and masks[1].sum() == 4 * 8
    assert not (masks[0] & masks[1]).any()
