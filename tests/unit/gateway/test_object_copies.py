"""The gateway's copies of small segmentation outputs and the pass requests they ride on."""

from __future__ import annotations

import asyncio

from multipass.images import sha256_hex
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, segmentation_pb2
from multipass_gateway.infra.clients import InternalClients
from multipass_gateway.infra.object_copies import MAX_COPY_BYTES, MAX_COPY_BYTES_PER_REQUEST, ObjectCopies

BUCKET = "multipass-jobs"


def copy_of(key: str, data: bytes) -> common_pb2.ObjectCopy:
    return common_pb2.ObjectCopy(bucket=BUCKET, key=key, sha256=sha256_hex(data), data=data)


def ref_of(copy: common_pb2.ObjectCopy) -> common_pb2.ImageRef:
    return common_pb2.ImageRef(bucket=copy.bucket, key=copy.key, sha256=copy.sha256, size=len(copy.data))


def request_reading(**refs) -> diffusion_pb2.PassRequest:
    return diffusion_pb2.PassRequest(
        job_id="job", pass_name="person-0", spec=diffusion_pb2.PassSpec(model="sd15", **refs)
    )


def test_a_request_carries_the_copies_of_the_mask_and_control_image_its_spec_names():
    copies = ObjectCopies(1024 * 1024)
    mask, pose, other = copy_of("m.png", b"mask" * 10), copy_of("p.png", b"pose" * 10), copy_of("o.png", b"x")
    copies.remember([mask, pose, other])
    request = request_reading(mask=ref_of(mask), control_image=ref_of(pose))
    sent = copies.attach(request)
    assert isinstance(sent, bytes)
    parsed = diffusion_pb2.PassRequest.FromString(sent)
    assert [c.key for c in parsed.copies] == ["m.png", "p.png"]
    parsed.ClearField("copies")
    assert parsed == request  # the rest of the request is unchanged
    assert copies.attach(request_reading()) == request_reading()  # nothing to attach: the request itself


def test_the_input_image_is_found_only_for_a_reader_that_asks_for_it():
    copies = ObjectCopies(1024 * 1024)
    base, mask = copy_of("base.png", b"pixels" * 50), copy_of("m.png", b"mask")
    copies.remember([base, mask])
    request = request_reading(image=ref_of(base), mask=ref_of(mask))
    # A diffusion worker may hold its own output: only the mask rides along.
    assert [c.key for c in diffusion_pb2.PassRequest.FromString(copies.attach(request)).copies] == ["m.png"]
    # The gateway's segmentation step looks the image up itself, to hand it to the segmentation service.
    assert copies.held(request.spec.image) == base
    assert copies.held(ref_of(copy_of("base.png", b"another version"))) is None


def test_a_copy_of_another_version_of_the_object_is_not_attached():
    copies = ObjectCopies(1024 * 1024)
    old = copy_of("m.png", b"old mask")
    copies.remember([old])
    newer = ref_of(copy_of("m.png", b"new mask"))
    assert copies.for_spec(diffusion_pb2.PassSpec(mask=newer)) == []
    copies.remember([common_pb2.ObjectCopy(bucket=BUCKET, key="n.png", data=b"no hash")])
    assert len(copies) == 1  # a copy without its hash is not kept


def test_copies_are_bounded_in_bytes_least_recently_used_first():
    copies = ObjectCopies(3000)
    first, second, third = (copy_of(f"{i}.png", bytes([i]) * 1000) for i in range(3))
    copies.remember([first, second, third])
    assert copies.for_spec(diffusion_pb2.PassSpec(mask=ref_of(first)))  # first is used: most recent now
    copies.remember([copy_of("3.png", b"z" * 1000)])
    assert copies.bytes_held <= 3000
    assert copies.for_spec(diffusion_pb2.PassSpec(mask=ref_of(first)))
    assert copies.for_spec(diffusion_pb2.PassSpec(mask=ref_of(second))) == []
    copies.remember([copy_of("big.png", b"b" * (MAX_COPY_BYTES + 1))])
    assert (
        copies.for_spec(diffusion_pb2.PassSpec(mask=ref_of(copy_of("big.png", b"b" * (MAX_COPY_BYTES + 1)))))
        == []
    )


def test_one_request_carries_at_most_its_budget_of_copy_bytes():
    copies = ObjectCopies(16 * 1024 * 1024)
    size = MAX_COPY_BYTES_PER_REQUEST // 2
    masks = [copy_of(f"layer-{i}.png", bytes([i]) * size) for i in range(4)]
    copies.remember(masks)
    spec = diffusion_pb2.PassSpec(layers=[diffusion_pb2.CompositeLayer(mask=ref_of(m)) for m in masks])
    attached = copies.for_spec(spec)
    assert sum(len(c.data) for c in attached) <= MAX_COPY_BYTES_PER_REQUEST
    assert [c.key for c in attached] == ["layer-0.png", "layer-1.png"]


def test_disabled_copies_ask_for_none_and_attach_none():
    copies = ObjectCopies(0)
    assert not copies.enabled and copies.copy_limit == 0
    copies.remember([copy_of("m.png", b"mask")])
    assert len(copies) == 0
    # A pass whose output is segmented next asks the worker for no copy either (none would be kept),
    # and the outbox entry's own request is left as it is.
    asking = request_reading()
    asking.copy_output = True
    sent = copies.attach(asking)
    assert not sent.copy_output and asking.copy_output
    assert ObjectCopies(1024).attach(asking) is asking


class _Segmentation:
    """A Segment stub answering with one mask and its copy; records what it was asked."""

    def __init__(self, copy: common_pb2.ObjectCopy):
        self.copy = copy
        self.asked: list[int] = []

    async def Segment(self, request, timeout, metadata):  # noqa: N802 - the stub's method name
        self.asked.append(request.copies_up_to_bytes)
        return segmentation_pb2.SegmentResponse(
            masks=[segmentation_pb2.MaskResult(mask=ref_of(self.copy), label="person-0")],
            copies=[self.copy] if request.copies_up_to_bytes else [],
        )


def test_the_internal_client_asks_for_copies_keeps_them_and_hands_references_only():
    copies = ObjectCopies(1024 * 1024)
    mask = copy_of("mask-person-0.png", b"mask bytes")

    async def call():
        clients = InternalClients(
            parser="127.0.0.1:1", segmentation="127.0.0.1:1", diffusion="127.0.0.1:1", copies=copies
        )
        clients.segmentation = _Segmentation(mask)
        try:
            return clients.segmentation, await clients.segment(segmentation_pb2.SegmentRequest())
        finally:
            await clients.close()

    stub, response = asyncio.run(call())
    assert stub.asked == [copies.copy_limit] and copies.copy_limit == MAX_COPY_BYTES
    assert not response.copies and response.masks[0].mask.key == "mask-person-0.png"
    assert [c.key for c in copies.for_spec(diffusion_pb2.PassSpec(mask=response.masks[0].mask))] == [
        "mask-person-0.png"
    ]


def test_an_outbox_entry_in_the_record_never_holds_copies():
    # Copies are attached to what is published, never to the stored outbox entry (the job record stays small).
    entry = events_pb2.OutboxRequest(subject="s", msg_id="m", request=request_reading())
    copies = ObjectCopies(1024 * 1024)
    mask = copy_of("m.png", b"mask")
    copies.remember([mask])
    entry.request.spec.mask.CopyFrom(ref_of(mask))
    copies.attach(entry.request)
    assert not entry.request.copies


def test_a_request_carries_the_copies_of_the_pass_named_to_follow_it():
    copies = ObjectCopies(1 << 20)
    own, following = copy_of("mask-person-0.png", b"m0"), copy_of("mask-person-1.png", b"m1")
    copies.remember([own, following])
    request = diffusion_pb2.PassRequest(spec=diffusion_pb2.PassSpec(mask=ref_of(own)))
    request.next_pass.spec.mask.CopyFrom(ref_of(following))
    sent = diffusion_pb2.PassRequest()
    sent.ParseFromString(copies.attach(request))
    assert [c.key for c in sent.copies] == [own.key, following.key]
