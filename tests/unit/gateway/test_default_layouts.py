"""Default layouts kept per (tenant, size, count): copies out, ttl, capacity, detected layouts never kept."""

from __future__ import annotations

from multipass.v1 import common_pb2, segmentation_pb2
from multipass_gateway.app.default_layouts import DefaultLayouts


def answer(source: str = "default", key: str = "jobs/t1/layouts/ab.png") -> segmentation_pb2.LayoutResponse:
    return segmentation_pb2.LayoutResponse(
        source=source, pose_image=common_pb2.ImageRef(bucket="multipass-jobs", key=key, sha256="ab")
    )


def test_an_answer_is_reused_as_a_copy_until_its_ttl_and_detected_layouts_are_not_kept():
    now = [0.0]
    layouts = DefaultLayouts(ttl=10, clock=lambda: now[0])
    key = ("t1", 256, 256, 2, True)
    layouts.put(key, answer())
    got = layouts.get(key)
    assert got == answer()
    got.pose_image.key = "changed by a caller"
    assert layouts.get(key) == answer()  # a copy each time: the kept answer is untouched
    assert layouts.get(("t1", 256, 256, 3, True)) is None and layouts.get(("t2", 256, 256, 2, True)) is None
    now[0] = 10.0
    assert layouts.get(key) is None
    layouts.put(key, answer(source="detected"))
    assert layouts.get(key) is None


def test_capacity_drops_the_least_recently_used_and_a_removed_tenant_is_forgotten():
    layouts = DefaultLayouts(capacity=2)
    a, b, c = ("t1", 1, 1, 1, True), ("t1", 2, 2, 1, True), ("t2", 3, 3, 1, True)
    layouts.put(a, answer())
    layouts.put(b, answer())
    assert layouts.get(a) is not None  # a used last: b goes when c comes
    layouts.put(c, answer(key="jobs/t2/layouts/ab.png"))
    assert layouts.get(b) is None and layouts.get(a) is not None and layouts.get(c) is not None
    layouts.forget("t1")
    assert layouts.get(a) is None and layouts.get(c) is not None
