"""The segmentation service through a real in-process gRPC server, with images in the real S3 endpoint."""

from __future__ import annotations

import dataclasses
import io
import struct
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_probes import check_streaming_probes
from PIL import Image
from skimage import data

from multipass.errors import FailedPrecondition
from multipass.grpc.errors import field_violations
from multipass.images import sha256_hex
from multipass.names import BUCKET_JOBS
from multipass.v1 import common_pb2, segmentation_pb2, segmentation_pb2_grpc
from multipass_dev.tiny_models.face_detector import INPUT_SIZE as TINY_INPUT_SIZE
from multipass_dev.tiny_models.face_detector import TINY_FACE
from multipass_segmentation.app import serve
from multipass_segmentation.settings import SegmentationSettings

PREFIX = "jobs/tenant-a/job-1/image-0/"
INPUT_KEY = "jobs/tenant-a/job-1/inputs/astronaut.png"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from multipass_dev.tiny_models import segmentation as tiny

    root = tmp_path_factory.getbasetemp() / "tiny-segmentation-models"
    tiny.build(root)
    return root


@pytest.fixture
def settings(tiny_model_dir: Path, s3_settings) -> SegmentationSettings:
    return SegmentationSettings(
        model_dir=tiny_model_dir, s3=s3_settings, grpc_addr="127.0.0.1:0", metrics_port=0
    )


@pytest.fixture
async def service(settings, store):
    running = await serve(settings, store=store)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield segmentation_pb2_grpc.SegmentationStub(channel)


@pytest.fixture
async def astronaut(store) -> common_pb2.ImageRef:
    return await store.put_image(BUCKET_JOBS, INPUT_KEY, Image.fromarray(data.astronaut()))


async def fetch_mask(store, ref: common_pb2.ImageRef) -> np.ndarray:
    raw = await store.get_bytes(ref.bucket, ref.key)
    assert sha256_hex(raw) == ref.sha256 and len(raw) == ref.size
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG" and image.mode == "L"
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels == 255


async def assert_serving(service) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "multipass.v1.Segmentation"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_and_reflection_v1_stream_and_close_cleanly(service, caplog):
    await check_streaming_probes(service.address, "multipass.v1.Segmentation", caplog)


def box_tuple(box: common_pb2.Box) -> tuple[float, float, float, float]:
    return (box.x0, box.y0, box.x1, box.y1)


async def test_a_content_addressed_pose_image_is_named_by_its_sha256(service, stub, store):
    def asked(key: str) -> segmentation_pb2.LayoutRequest:
        return segmentation_pb2.LayoutRequest(
            width=256, height=256, count=3, output_bucket=BUCKET_JOBS, output_key=key, content_addressed=True
        )

    first = await stub.Layout(asked(PREFIX + "layouts/"))
    assert first.pose_image.key == f"{PREFIX}layouts/{first.pose_image.sha256}.png"
    assert sha256_hex(await store.get_bytes(BUCKET_JOBS, first.pose_image.key)) == first.pose_image.sha256
    again = await stub.Layout(asked(PREFIX + "layouts/"))
    assert again.pose_image == first.pose_image  # the same content, the same name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Layout(asked(PREFIX + "pose.png"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(caught.value)] == ["output_key"]


async def test_layout_then_person_masks_then_faces(service, stub, store, astronaut):
    layout = await stub.Layout(
        segmentation_pb2.LayoutRequest(
            width=512, height=512, count=2, output_bucket=BUCKET_JOBS, output_key=PREFIX + "pose.png"
        )
    )
    assert layout.source == "default"
    assert [s.index for s in layout.slots] == [0, 1]
    assert all(len(s.keypoints) == 18 for s in layout.slots)
    assert layout.slots[0].box.x1 <= layout.slots[1].box.x0
    pose = await store.get_image(layout.pose_image)
    assert pose.size == (512, 512) and np.asarray(pose).any()

    response = await stub.Segment(
        segmentation_pb2.SegmentRequest(
            image=astronaut,
            persons=segmentation_pb2.PersonMasksRequest(slots=layout.slots),
            output_prefix=PREFIX,
        )
    )
    assert [m.label for m in response.masks] == ["person-0", "person-1"]
    assert [m.mask.key for m in response.masks] == [
        PREFIX + "mask-person-0.png",
        PREFIX + "mask-person-1.png",
    ]
    masks = []
    for result, slot in zip(response.masks, layout.slots, strict=True):
        assert (result.mask.width, result.mask.height) == (512, 512)
        mask = await fetch_mask(store, result.mask)
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        assert xs.min() >= slot.box.x0 - 0.5 and xs.max() < slot.box.x1
        assert box_tuple(result.box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert result.area_fraction == pytest.approx(mask.mean(), abs=1e-6)
        assert 0.0 <= result.score <= 1.0
    assert not (masks[0] & masks[1]).any()

    faces = await stub.DetectFaces(
        segmentation_pb2.DetectFacesRequest(image=astronaut, person_masks=response.masks)
    )
    assert len(faces.faces) == 1
    face = faces.faces[0]
    # The tiny landmark detector's one face (multipass_dev.tiny_models.face_detector.TINY_FACE).
    scale = 512 / TINY_INPUT_SIZE
    assert box_tuple(face.box) == pytest.approx(tuple(v * scale for v in TINY_FACE.box()), abs=8)
    landmarks = np.array([(p.x, p.y) for p in face.landmarks])
    assert np.abs(landmarks - TINY_FACE.points() * scale).max() < 8
    region = np.zeros((512, 512), dtype=bool)
    region[round(face.box.y0) : round(face.box.y1), round(face.box.x0) : round(face.box.x1)] = True
    overlaps = [(m & region).sum() / region.sum() for m in masks]
    expected = int(np.argmax(overlaps)) if max(overlaps) >= 0.1 else -1
    assert face.slot_index == expected


async def test_faces_are_assigned_to_the_slot_whose_mask_holds_them(stub, store, astronaut):
    left = np.zeros((512, 512), dtype=np.uint8)
    left[:, :256] = 255
    right = 255 - left
    refs = [
        await store.put_image(BUCKET_JOBS, PREFIX + "right.png", Image.fromarray(right, "L")),
        await store.put_image(BUCKET_JOBS, PREFIX + "left.png", Image.fromarray(left, "L")),
    ]
    request = segmentation_pb2.DetectFacesRequest(
        image=astronaut,
        person_masks=[segmentation_pb2.MaskResult(index=i, mask=ref) for i, ref in enumerate(refs)],
    )
    reply = await stub.DetectFaces(request)
    assert [f.slot_index for f in reply.faces] == [1]
    reply = await stub.DetectFaces(segmentation_pb2.DetectFacesRequest(image=astronaut))
    assert [f.slot_index for f in reply.faces] == [-1]


async def test_the_haar_fallback_finds_her_real_face_without_landmarks(
    tiny_model_dir, s3_settings, store, astronaut, tmp_path: Path
):
    from multipass_dev.tiny_models import segmentation as tiny

    root = tmp_path / "models"
    (root / "segmentation").mkdir(parents=True)
    for name in ("sam", "grounding"):
        (root / "segmentation" / name).symlink_to(tiny_model_dir / "segmentation" / name)
    tiny.build_haar_faces(root / "segmentation" / "faces")
    settings = SegmentationSettings(model_dir=root, s3=s3_settings, grpc_addr="127.0.0.1:0", metrics_port=0)
    running = await serve(settings, store=store)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = segmentation_pb2_grpc.SegmentationStub(channel)
            reply = await stub.DetectFaces(segmentation_pb2.DetectFacesRequest(image=astronaut))
    finally:
        await running.stop(grace=1.0)
    [face] = reply.faces
    assert box_tuple(face.box) == pytest.approx((177, 67, 270, 160), abs=6)
    assert len(face.landmarks) == 0


async def test_text_mask(stub, store, astronaut):
    text = segmentation_pb2.TextMaskRequest(
        prompt="person", box_threshold=0.01, text_threshold=0.01, dilate_pixels=2
    )
    response = await stub.Segment(
        segmentation_pb2.SegmentRequest(
            image=astronaut, text=text, output_prefix=PREFIX, output_bucket=BUCKET_JOBS
        )
    )
    [result] = response.masks
    assert result.label == "prompt" and result.mask.key == PREFIX + "mask-prompt.png"
    mask = await fetch_mask(store, result.mask)
    assert mask.any()
    assert result.area_fraction == pytest.approx(mask.mean(), abs=1e-6)
    nothing = await stub.Segment(
        segmentation_pb2.SegmentRequest(
            image=astronaut,
            text=segmentation_pb2.TextMaskRequest(prompt="person", box_threshold=1.0, invert=True),
            output_prefix=PREFIX + "second/",
        )
    )
    assert nothing.masks[0].area_fraction == 1.0
    assert any("no box found" in w for w in nothing.warnings)


async def test_layout_from_an_input_image(stub, astronaut):
    layout = await stub.Layout(
        segmentation_pb2.LayoutRequest(count=2, image=astronaut, output_key=PREFIX + "pose.png")
    )
    assert layout.source == "detected"
    assert len(layout.slots) == 2
    assert layout.slots[0].box.x0 + layout.slots[0].box.x1 <= layout.slots[1].box.x0 + layout.slots[1].box.x1
    assert all(len(s.keypoints) == 0 for s in layout.slots)
    assert not layout.HasField("pose_image")
    assert any("no pose image" in w for w in layout.warnings)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header announcing a huge image, with a tiny compressed body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


async def expect_error(call, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    fields = [f for f, _ in field_violations(caught.value)]
    assert field in fields, (fields, caught.value.details())


async def test_bad_input_is_refused_with_the_field_named_and_the_service_stays_healthy(
    service, stub, store, astronaut
):
    persons = segmentation_pb2.PersonMasksRequest
    slot = segmentation_pb2.Slot
    missing = common_pb2.ImageRef(bucket=BUCKET_JOBS, key="jobs/nope.png")
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=missing, text=segmentation_pb2.TextMaskRequest(prompt="x"), output_prefix=PREFIX
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "image",
    )
    text_ref = await store.put_bytes(BUCKET_JOBS, "jobs/notes.txt", b"hello, not an image")
    not_image = common_pb2.ImageRef(bucket=text_ref.bucket, key=text_ref.key)
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=not_image, text=segmentation_pb2.TextMaskRequest(prompt="x"), output_prefix=PREFIX
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image",
    )
    bomb = await store.put_bytes(BUCKET_JOBS, "jobs/bomb.png", bomb_png(60000, 60000))
    await expect_error(
        stub.Layout(
            segmentation_pb2.LayoutRequest(
                count=1, image=common_pb2.ImageRef(bucket=bomb.bucket, key=bomb.key)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image",
    )
    zero_area = slot(index=0, box=common_pb2.Box(x0=10, y0=10, x1=10, y1=100))
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut, persons=persons(slots=[zero_area]), output_prefix=PREFIX
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "persons.slots[0].box",
    )
    outside = slot(index=0, box=common_pb2.Box(x0=400, y0=10, x1=600, y1=100))
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut, persons=persons(slots=[outside]), output_prefix=PREFIX
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "persons.slots[0].box",
    )
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(image=astronaut, persons=persons(slots=[]), output_prefix=PREFIX)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "persons.slots",
    )
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut, text=segmentation_pb2.TextMaskRequest(prompt="  "), output_prefix=PREFIX
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text.prompt",
    )
    await expect_error(
        stub.Segment(segmentation_pb2.SegmentRequest(image=astronaut, output_prefix=PREFIX)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "kind",
    )
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut, text=segmentation_pb2.TextMaskRequest(prompt="face")
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output_prefix",
    )
    await expect_error(
        stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut,
                text=segmentation_pb2.TextMaskRequest(prompt="face"),
                output_prefix=PREFIX,
                output_bucket="no-such-bucket",
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "output_bucket",
    )
    await expect_error(
        stub.Layout(segmentation_pb2.LayoutRequest(width=512, height=512, count=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "count",
    )
    small = await store.put_image(BUCKET_JOBS, PREFIX + "small.png", Image.new("L", (64, 64)))
    await expect_error(
        stub.DetectFaces(
            segmentation_pb2.DetectFacesRequest(
                image=astronaut, person_masks=[segmentation_pb2.MaskResult(index=0, mask=small)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "person_masks[0].mask",
    )
    await assert_serving(service)
    # and it still answers a good request
    reply = await stub.DetectFaces(segmentation_pb2.DetectFacesRequest(image=astronaut))
    assert len(reply.faces) == 1


async def test_images_over_the_pixel_cap_are_refused(settings, store, astronaut):
    capped = await serve(dataclasses.replace(settings, max_pixels=256 * 256), store=store)
    try:
        async with grpc.aio.insecure_channel(capped.address) as channel:
            stub = segmentation_pb2_grpc.SegmentationStub(channel)
            await expect_error(
                stub.DetectFaces(segmentation_pb2.DetectFacesRequest(image=astronaut)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "image",
            )
        await assert_serving(capped)
    finally:
        await capped.stop(grace=1.0)


async def test_metrics_are_exported(service, stub, astronaut):
    text = segmentation_pb2.TextMaskRequest(prompt="person", box_threshold=1.0)
    await stub.Segment(segmentation_pb2.SegmentRequest(image=astronaut, text=text, output_prefix=PREFIX))
    await stub.Layout(segmentation_pb2.LayoutRequest(width=64, height=64, count=1))
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    assert 'multipass_segment_duration_seconds_count{kind="text"}' in body
    assert 'multipass_segment_duration_seconds_count{kind="layout"}' in body
    for phase in ("load", "model", "store"):
        assert f'multipass_segment_phase_seconds_count{{kind="text",phase="{phase}"}}' in body
    assert 'multipass_masks_total{kind="text",outcome="empty"}' in body
    assert "multipass_segment_empty_total" in body
    empty_line = next(line for line in body.splitlines() if line.startswith("multipass_segment_empty_total "))
    assert float(empty_line.split()[1]) >= 1.0


async def test_internal_token_is_required_when_configured(settings, store, astronaut):
    guarded = await serve(dataclasses.replace(settings, internal_token="s3cret"), store=store)
    try:
        async with grpc.aio.insecure_channel(guarded.address) as channel:
            stub = segmentation_pb2_grpc.SegmentationStub(channel)
            request = segmentation_pb2.DetectFacesRequest(image=astronaut)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DetectFaces(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DetectFaces(request, metadata=(("x-multipass-internal", "wrong"),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.DetectFaces(request, metadata=(("x-multipass-internal", "s3cret"),))
            assert len(reply.faces) == 1
        await assert_serving(guarded)
    finally:
        await guarded.stop(grace=1.0)


async def test_a_missing_model_fails_at_startup_naming_the_file(settings, store, tmp_path: Path):
    empty = tmp_path / "models"
    (empty / "segmentation").mkdir(parents=True)
    with pytest.raises(FailedPrecondition) as caught:
        await serve(dataclasses.replace(settings, model_dir=empty), store=store)
    assert str(empty / "segmentation" / "sam") in str(caught.value)


async def test_info_reports_the_features_of_the_model_directory(stub, settings):
    from multipass.model_catalog import features

    info = await stub.Info(segmentation_pb2.SegmentationInfoRequest())
    assert [f.name for f in info.features] == ["sam", "text_masks", "faces"]
    assert all(f.available for f in info.features) and info.device == "cpu"
    expected = features.check(settings.model_dir, services=[features.SEGMENTATION])
    assert list(info.features) == features.to_proto(expected)


async def test_the_start_log_names_the_pull_that_installs_a_missing_model(settings, store, tmp_path, caplog):
    empty = tmp_path / "models"
    (empty / "segmentation").mkdir(parents=True)
    with pytest.raises(FailedPrecondition):
        await serve(dataclasses.replace(settings, model_dir=empty), store=store)
    logged = {r.feature: r for r in caplog.records if hasattr(r, "feature")}
    assert (logged["sam"].status, logged["sam"].fix) == ("missing", "multipass models pull sam")
    assert (logged["text_masks"].status, logged["text_masks"].fix) == (
        "missing",
        "multipass models pull grounding",
    )
    assert (logged["faces"].status, logged["faces"].fix) == ("fallback", "multipass models pull faces")


async def test_cli_against_the_running_service(service, s3_settings, tmp_path: Path, monkeypatch, capsys):
    import json

    from multipass_client.cli.main import main

    monkeypatch.setenv("MULTIPASS_S3_ENDPOINT", s3_settings.endpoint)
    monkeypatch.setenv("MULTIPASS_S3_ACCESS_KEY", s3_settings.access_key)
    monkeypatch.setenv("MULTIPASS_S3_SECRET_KEY", s3_settings.secret_key)
    image_path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image_path)
    out = tmp_path / "out" / "astro.png"
    code = await _run_cli(main, [
        "segment", str(image_path), "--slots", "2", "--addr", service.address, "--out", str(out), "--json",
    ])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["label"] for m in report["masks"]] == ["person-0", "person-1"]
    assert report["source"] == "detected"
    for i in range(2):
        written = Image.open(tmp_path / "out" / f"astro-person-{i}.png")
        assert written.size == (512, 512) and written.mode == "L"
    code = await _run_cli(
        main,
        [
            "segment",
            str(image_path),
            "--prompt",
            "face",
            "--addr",
            service.address,
            "--out",
            str(out),
            "--json",
        ],
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["masks"][0]["label"] == "prompt" and report["masks"][0]["box"] is not None
    assert Image.open(out).size == (512, 512)


async def _run_cli(main, argv: list[str]) -> int:
    """The CLI runs its own event loop: call it from a worker thread."""
    import asyncio

    return await asyncio.to_thread(main, argv)


async def test_copies_of_the_outputs_come_back_only_when_asked_and_equal_the_stored_objects(
    service, stub, store, astronaut
):
    layout = await stub.Layout(
        segmentation_pb2.LayoutRequest(
            width=512,
            height=512,
            count=2,
            output_bucket=BUCKET_JOBS,
            output_key=PREFIX + "pose.png",
            copies_up_to_bytes=256 * 1024,
        )
    )
    persons = segmentation_pb2.PersonMasksRequest(slots=layout.slots)
    asked = await stub.Segment(
        segmentation_pb2.SegmentRequest(
            image=astronaut, persons=persons, output_prefix=PREFIX, copies_up_to_bytes=256 * 1024
        )
    )
    refs = [layout.pose_image, *(m.mask for m in asked.masks)]
    copies = [*layout.copies, *asked.copies]
    assert [(c.bucket, c.key) for c in copies] == [(r.bucket, r.key) for r in refs]
    for copy, ref in zip(copies, refs, strict=True):
        stored = await store.get_bytes(ref.bucket, ref.key)
        assert copy.data == stored and copy.sha256 == ref.sha256 == sha256_hex(stored)

    not_asked = await stub.Segment(
        segmentation_pb2.SegmentRequest(image=astronaut, persons=persons, output_prefix=PREFIX)
    )
    assert not not_asked.copies and len(not_asked.masks) == 2
    smallest = min(len(c.data) for c in asked.copies)
    too_small = await stub.Segment(
        segmentation_pb2.SegmentRequest(
            image=astronaut, persons=persons, output_prefix=PREFIX, copies_up_to_bytes=smallest - 1
        )
    )
    assert all(len(c.data) <= smallest - 1 for c in too_small.copies)
    assert len(too_small.copies) < len(asked.copies)

    for bad in (-1, 1024 * 1024 + 1):
        await expect_error(
            stub.Segment(
                segmentation_pb2.SegmentRequest(
                    image=astronaut, persons=persons, output_prefix=PREFIX, copies_up_to_bytes=bad
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "copies_up_to_bytes",
        )
        await expect_error(
            stub.Layout(segmentation_pb2.LayoutRequest(width=64, height=64, count=1, copies_up_to_bytes=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "copies_up_to_bytes",
        )
    await assert_serving(service)


async def test_a_copy_of_the_image_on_the_request_stands_in_for_the_store_only_when_it_is_that_object(
    service, stub, store, astronaut
):
    from multipass_segmentation.metrics import IMAGE_COPIES

    def seen(outcome: str) -> float:
        return IMAGE_COPIES.labels(outcome=outcome)._value.get()

    layout = await stub.Layout(segmentation_pb2.LayoutRequest(width=512, height=512, count=1))
    persons = segmentation_pb2.PersonMasksRequest(slots=layout.slots)
    stored = await store.get_bytes(astronaut.bucket, astronaut.key)
    good = common_pb2.ObjectCopy(
        bucket=astronaut.bucket, key=astronaut.key, sha256=astronaut.sha256, data=stored
    )
    damaged = common_pb2.ObjectCopy()
    damaged.CopyFrom(good)
    damaged.data = stored[:-1]

    def segment(copies):
        return stub.Segment(
            segmentation_pb2.SegmentRequest(
                image=astronaut, persons=persons, output_prefix=PREFIX, copies=copies
            )
        )

    from_store = await segment([])
    hits, misses = seen("hit"), seen("miss")
    assert [m.mask.sha256 for m in (await segment([damaged])).masks] == [
        m.mask.sha256 for m in from_store.masks
    ]
    assert (seen("hit"), seen("miss")) == (hits, misses + 1)  # the damaged copy: read from the store
    await store.delete(astronaut.bucket, astronaut.key)  # only the copy can give the image now
    from_copy = await segment([good])
    assert seen("hit") == hits + 1
    assert [m.mask.sha256 for m in from_copy.masks] == [m.mask.sha256 for m in from_store.masks]
    # Without a copy that is the object, the missing image is NOT_FOUND, as before.
    await expect_error(segment([damaged]), grpc.StatusCode.NOT_FOUND, "image")
    await assert_serving(service)
