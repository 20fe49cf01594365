"""Face passes forwarded by the gateway: each face's person, prompt, LoRAs, and the tune files they need."""

from __future__ import annotations

from gateway_helpers import config, image_ref, parsed_prompt, record_for, slots

from multipass.v1 import common_pb2, segmentation_pb2
from multipass_gateway.domain import job_state, planner
from multipass_gateway.domain.face_targets import FaceFilter, faces_request


def tune_file(tune_id: str) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(
        bucket="multipass-tunes",
        key=f"tunes/t/{tune_id}/lora.safetensors",
        sha256=tune_id[0] * 64,
        size=100,
    )


def record():
    parsed = parsed_prompt(
        2, inpaint_faces=True, face_swap=True, base_loras=["5"], person_loras={0: ["7"], 1: ["8"]}
    )
    inputs = planner.JobInputs(
        seed=100,
        width=512,
        height=512,
        slots=slots(2),
        tune_files={t: tune_file(t) for t in ("5", "7", "8")},
        reference_images={"7": [image_ref("uploads/t/a.png"), image_ref("uploads/t/b.png")]},
    )
    return record_for(parsed, inputs=inputs, cfg=config())


def faces() -> list[segmentation_pb2.Face]:
    """One face in each slot (the slots split 512 pixels in two), one outside both."""
    return [
        segmentation_pb2.Face(box=common_pb2.Box(x0=60, y0=40, x1=120, y1=100), slot_index=0),
        segmentation_pb2.Face(box=common_pb2.Box(x0=300, y0=40, x1=360, y1=100), slot_index=1),
        segmentation_pb2.Face(box=common_pb2.Box(x0=200, y0=400, x1=240, y1=440), slot_index=-1),
    ]


def request_of(job, name: str):
    index = job_state.find_pass(job, 0, name)
    return job_state.build_request(job, 0, index).request


def test_faces_pass_gets_each_persons_loras_and_their_files_with_sha256():
    job = record()
    forwarded = faces_request(job, request_of(job, "faces"), faces(), None)
    spec = forwarded.spec
    assert [[r.tune_id for r in f.loras] for f in spec.faces] == [["7"], ["8"], ["5"]]
    assert [f.prompt for f in spec.faces] == [
        "spring, ohwx person 0",
        "spring, ohwx person 1",
        "a garden, spring",
    ]
    assert sorted(spec.tune_files) == ["5", "7", "8"]
    assert all(spec.tune_files[t].sha256 == t * 64 for t in ("5", "7", "8"))
    assert [r.tune_id for r in spec.loras] == ["5"]


def test_face_swap_gets_identities_from_reference_images_and_loads_no_adapter():
    job = record()
    forwarded = faces_request(job, request_of(job, "face_swap"), faces(), None)
    spec = forwarded.spec
    assert not spec.loras
    # The faces' tunes name the identities; a face of no person has none and is left as it is.
    assert [[r.tune_id for r in f.loras] for f in spec.faces] == [["7"], ["8"], []]
    assert sorted(spec.tune_files) == ["7/reference-0", "7/reference-1"]
    assert spec.tune_files["7/reference-0"].sha256 == "0" * 64


def test_each_face_keeps_its_landmarks_and_a_face_without_them_gets_none():
    job = record()
    found = faces()
    eyes_nose_mouth = [(75, 60), (105, 60), (90, 75), (78, 88), (102, 88)]
    found[0].landmarks.extend(common_pb2.Point(x=x, y=y) for x, y in eyes_nose_mouth)
    for name in ("faces", "face_swap"):
        spec = faces_request(job, request_of(job, name), found, None).spec
        assert [(p.x, p.y) for p in spec.faces[0].landmarks] == eyes_nose_mouth, name
        assert [len(f.landmarks) for f in spec.faces] == [5, 0, 0], name


def face(x0: float, y0: float, side: float) -> segmentation_pb2.Face:
    return segmentation_pb2.Face(box=common_pb2.Box(x0=x0, y0=y0, x1=x0 + side, y1=y0 + side))


def test_the_face_filter_leaves_small_and_surplus_faces_as_they_are():
    # A 1000x1000 image: faces of 200, 40 and 100 pixels (4%, 0.16% and 1% of it), in detection order.
    faces = [face(0, 0, 200), face(500, 500, 40), face(300, 0, 100)]
    assert FaceFilter().select(faces, 1000, 1000) == (faces, [])
    kept, warnings = FaceFilter(min_area_ratio=0.005).select(faces, 1000, 1000)
    assert kept == [faces[0], faces[2]]
    assert warnings == ["1 face(s) smaller than 0.005 of the image left as they are"]
    kept, warnings = FaceFilter(max_count=2).select(faces, 1000, 1000)
    assert kept == [faces[0], faces[2]]  # the two largest, still in detection order
    assert warnings == ["1 face(s) beyond the 2 largest left as they are"]
    kept, warnings = FaceFilter(min_area_ratio=0.05).select(faces, 1000, 1000)
    assert kept == [] and len(warnings) == 1


async def test_the_faces_step_forwards_the_kept_faces_and_tells_the_job_of_the_others():
    from multipass_gateway.app.segmentation_steps import SegmentationSteps

    published, updates = [], []

    class Bus:
        async def publish(self, subject, message, *, msg_id=None):
            published.append((subject, message))

    class Clients:
        async def detect_faces(self, request):
            return segmentation_pb2.DetectFacesResponse(faces=faces())

    class Jobs:
        async def update(self, tenant, job_id, fn):
            updates.append(fn)

    job = record()
    request = request_of(job, "faces")
    request.spec.image.CopyFrom(image_ref("jobs/t/j/image-0/person-1.png"))
    request.spec.image.width = request.spec.image.height = 512
    steps = SegmentationSteps(Bus(), Jobs(), Clients(), face_filter=FaceFilter(max_count=2))
    await steps._faces(job, request)
    ((_subject, forwarded),) = published
    assert [f.box.x0 for f in forwarded.spec.faces] == [60, 300]  # the two largest; the small one is left
    (add_warning,) = updates
    assert add_warning(job) and list(job.job.warnings)[-1] == (
        "faces: 1 face(s) beyond the 2 largest left as they are"
    )


def test_after_a_resize_a_face_in_two_slot_boxes_goes_to_the_nearer_person():
    """After hires the masks no longer fit the image and faces are placed by the slots; where two slot boxes
    overlap (persons side by side in a photo), the face belongs to the person whose figure is nearer, as
    the person masks' territories are drawn, not to the lower slot index."""
    job = record()
    del job.slots[:]
    for index, (x0, x1, head) in enumerate(((0, 300, 150), (200, 512, 356))):
        job.slots.add(
            index=index,
            box=common_pb2.Box(x0=x0, y0=0, x1=x1, y1=512),
            keypoints=[common_pb2.Keypoint(index=0, x=head, y=50, confidence=1.0)],
        )
    scale = (1.5, 1.5)
    # Centres at x 150 (slot 0 only), 280 (both boxes, nearer person 1's head) and 230 (both, nearer 0's).
    found = [face(x * 1.5 - 30, 30, 60) for x in (150, 280, 230)]
    spec = faces_request(job, request_of(job, "faces"), found, scale).spec
    assert [[r.tune_id for r in f.loras] for f in spec.faces] == [["7"], ["8"], ["7"]]
