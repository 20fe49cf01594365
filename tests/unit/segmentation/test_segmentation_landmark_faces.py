"""The landmark face detector: SCRFD's outputs decoded (checked by hand and against a reference
computation), loaded through the production path, the file rule, and the tiny detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from multipass.errors import FailedPrecondition
from multipass.face_detection import (
    ScrfdDetector,
    detector_file,
    face_detector_choice,
    find_landmark_detector,
)
from multipass.scrfd_decode import decode
from multipass_dev.tiny_models.face_detector import INPUT_SIZE, TINY_FACE, write_face_detector
from multipass_segmentation.faces import LandmarkFaceDetector

STRIDES = (8, 16, 32)
ANCHORS = 2


def close(actual, expected, tolerance: float = 1e-5) -> bool:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return actual.shape == expected.shape and np.allclose(actual, expected, rtol=0, atol=tolerance)


def constant_scrfd(path: Path, outputs: list[np.ndarray], input_hw=(32, 32)) -> Path:
    """An ONNX model with SCRFD's input and the given output tensors (plus 0 x the input's mean)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    values = []
    for index, array in enumerate(outputs):
        array = np.asarray(array, np.float32)
        initializers.append(numpy_helper.from_array(array, f"value{index}"))
        nodes.append(helper.make_node("Add", [f"value{index}", "nothing"], [f"out{index}"]))
        values.append(helper.make_tensor_value_info(f"out{index}", TensorProto.FLOAT, list(array.shape)))
    height, width = input_hw
    graph = helper.make_graph(
        nodes,
        "constant-scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, height, width])],
        values,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def empty_outputs(input_hw=(32, 32)) -> list[np.ndarray]:
    """Zero scores, boxes and landmarks for an input of ``input_hw``: 3 + 3 + 3 tensors."""
    rows = [(input_hw[0] // s) * (input_hw[1] // s) * ANCHORS for s in STRIDES]
    return [np.zeros((r, c), np.float32) for c in (1, 4, 10) for r in rows]


def hand_made_outputs() -> list[np.ndarray]:
    """Two faces and three candidates that must go, for a 32x32 input (grids 4x4, 2x2, 1x1).

    Row of (row, column, anchor) on a grid of width w: (row * w + column) * 2 + anchor.
    """
    outputs = empty_outputs()
    score8, score16, _, box8, box16, _, kps8, _, _ = outputs
    score8[13] = 0.9  # stride 8, row 1, column 2, anchor 1: centre (16, 8)
    box8[13] = (1, 2, 3, 4)  # x 8 -> (8, 16, 24, 32): box (8, -8, 40, 40)
    kps8[13] = (-0.5, -0.5, 0.5, -0.5, 0, 0, -0.25, 0.5, 0.25, 0.5)
    score8[14] = 0.6  # row 1, column 3, anchor 0: centre (24, 8); overlaps the first by IoU 0.6
    box8[14] = (1, 2, 3, 4)
    score16[0] = 0.5  # stride 16, row 0, column 0: centre (0, 0); the threshold itself is kept
    box16[0] = (0.5, 0.5, 1.0, 1.5)  # x 16 -> box (-8, -8, 16, 24)
    score16[7] = 0.49  # below the threshold
    box16[7] = (1, 1, 1, 1)
    return outputs


#: A 64x32 image letterboxes into 32x32 at scale 0.5 (32x16 at the top); image = input / 0.5.
EXPECTED_BOXES = [(16, -16, 80, 80), (-16, -16, 32, 48)]
EXPECTED_LANDMARKS = [(24, 8), (40, 8), (32, 16), (28, 24), (36, 24)]


def test_decode_matches_the_hand_computed_faces(tmp_path: Path):
    detector = ScrfdDetector(constant_scrfd(tmp_path / "det.onnx", hand_made_outputs()))
    assert detector.input_size == (32, 32) and detector.has_landmarks
    found = detector.detect(np.zeros((32, 64, 3), np.uint8))
    assert close(found.scores, [0.9, 0.5])
    assert close(found.boxes, EXPECTED_BOXES)
    assert close(found.landmarks[0], EXPECTED_LANDMARKS)
    assert close(found.landmarks[1], [(0, 0)] * 5)


def test_batched_outputs_decode_the_same(tmp_path: Path):
    batched = [array[None] for array in hand_made_outputs()]
    found = ScrfdDetector(constant_scrfd(tmp_path / "det.onnx", batched)).detect(
        np.zeros((32, 64, 3), np.uint8)
    )
    assert close(found.boxes, EXPECTED_BOXES)


def test_landmark_faces_are_clipped_to_the_image_and_sorted_left_to_right(tmp_path: Path):
    detector = LandmarkFaceDetector(constant_scrfd(tmp_path / "det.onnx", hand_made_outputs()))
    faces = detector.detect(np.zeros((32, 64, 3), np.uint8))
    assert [f.box.as_tuple() for f in faces] == [(0, 0, 32, 32), (16, 0, 64, 32)]
    assert [f.score for f in faces] == pytest.approx([0.5, 0.9])
    assert close(faces[1].landmarks, EXPECTED_LANDMARKS)
    assert all(f.slot_index == -1 for f in faces)


def reference_decode(outputs, input_size, scale, threshold=0.5, nms_threshold=0.4):
    """insightface's decode written out candidate by candidate, with its greedy +1-pixel NMS."""
    width, height = input_size
    candidates = []
    for level, stride in enumerate(STRIDES):
        columns = width // stride
        for row in range(height // stride):
            for column in range(columns):
                for anchor in range(ANCHORS):
                    i = (row * columns + column) * ANCHORS + anchor
                    score = float(outputs[level][i, 0])
                    if score < threshold:
                        continue
                    cx, cy = column * stride, row * stride
                    left, top, right, bottom = outputs[level + 3][i] * stride
                    box = (
                        (cx - left) / scale,
                        (cy - top) / scale,
                        (cx + right) / scale,
                        (cy + bottom) / scale,
                    )
                    offsets = outputs[level + 6][i] * stride
                    points = [
                        ((cx + offsets[2 * k]) / scale, (cy + offsets[2 * k + 1]) / scale) for k in range(5)
                    ]
                    candidates.append((score, box, points))
    candidates.sort(key=lambda c: -c[0])

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    kept = []
    for candidate in candidates:
        if all(iou(candidate[1], k[1]) <= nms_threshold for k in kept):
            kept.append(candidate)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_and_nms_match_a_reference_computation(seed: int):
    rng = np.random.default_rng(seed)
    outputs = empty_outputs((64, 96))
    for level in range(3):
        outputs[level][:] = rng.uniform(0, 1, outputs[level].shape)
        outputs[level + 3][:] = rng.uniform(0.2, 3.0, outputs[level + 3].shape)
        outputs[level + 6][:] = rng.uniform(-2.0, 2.0, outputs[level + 6].shape)
    found = decode(outputs, (96, 64), 0.75)
    expected = reference_decode(outputs, (96, 64), 0.75)
    assert 3 <= len(expected) < sum(len(o) for o in outputs[:3]) // 2  # NMS removed most candidates
    assert close(found.scores, [c[0] for c in expected])
    assert close(found.boxes, [c[1] for c in expected], 1e-4)
    assert close(found.landmarks, [c[2] for c in expected], 1e-4)


def test_the_five_stride_one_anchor_layout(tmp_path: Path):
    """15 outputs: strides 8..128, one anchor per location (insightface's other landmark layout)."""
    strides = (8, 16, 32, 64, 128)
    rows = [(128 // s) ** 2 for s in strides]
    outputs = [np.zeros((r, c), np.float32) for c in (1, 4, 10) for r in rows]
    outputs[3][0] = 0.8  # stride 64, location (0, 0): a zero-size box at the origin
    outputs[3][1] = 0.7  # stride 64, row 0, column 1: centre (64, 0)
    outputs[8][1] = (0.5, 0.5, 0.5, 0.5)  # x 64: box (32, -32, 96, 32)
    outputs[13][1] = (0.25,) * 10  # x 64: every point at (80, 16)
    found = ScrfdDetector(constant_scrfd(tmp_path / "det.onnx", outputs, (128, 128))).detect(
        np.zeros((128, 128, 3), np.uint8)
    )
    assert close(found.scores, [0.8, 0.7])
    assert close(found.boxes[1], (32, -32, 96, 32))
    assert close(found.landmarks[1], [(80, 16)] * 5)


def test_the_letterbox_scales_to_fit_at_the_top_left_and_normalises(tmp_path: Path):
    detector = ScrfdDetector(constant_scrfd(tmp_path / "det.onnx", hand_made_outputs()))
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = 255  # red
    blob, scale = detector.letterbox(image)
    assert blob.shape == (1, 3, 32, 32) and scale == 0.5
    assert np.allclose(blob[0, 0, :16], (255 - 127.5) / 128) and np.allclose(blob[0, 1:, :16], -127.5 / 128)
    assert np.allclose(blob[0, :, 16:], -127.5 / 128)  # the padding below the image is zero pixels


def test_a_dynamic_input_runs_at_640(tmp_path: Path):
    import onnx

    path = constant_scrfd(tmp_path / "det.onnx", empty_outputs((640, 640)))
    model = onnx.load(str(path))
    for dim, name in zip(
        model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width"), strict=True
    ):
        dim.dim_param = name
    onnx.save(model, str(path))
    detector = ScrfdDetector(path)
    assert detector.input_size == (640, 640)
    assert len(detector.detect(np.zeros((100, 80, 3), np.uint8))) == 0


def test_models_without_scrfds_layout_are_refused_naming_the_file(tmp_path: Path):
    with pytest.raises(FailedPrecondition, match="has 4 outputs; an SCRFD detector has 6, 9, 10, 15"):
        ScrfdDetector(constant_scrfd(tmp_path / "four.onnx", empty_outputs()[:4]))
    shuffled = empty_outputs()
    shuffled[0], shuffled[3] = shuffled[3], shuffled[0]  # a box tensor where the first scores belong
    detector = ScrfdDetector(constant_scrfd(tmp_path / "shuffled.onnx", shuffled))
    with pytest.raises(
        FailedPrecondition, match=r"shuffled.onnx: output 0 has shape \(32, 4\); expected \(32, 1\)"
    ):
        detector.detect(np.zeros((32, 32, 3), np.uint8))
    no_landmarks = constant_scrfd(tmp_path / "boxes.onnx", empty_outputs()[:6])
    assert not ScrfdDetector(no_landmarks).has_landmarks
    with pytest.raises(FailedPrecondition, match="has no landmark outputs"):
        LandmarkFaceDetector(no_landmarks)
    with pytest.raises(FailedPrecondition, match="missing.onnx"):
        ScrfdDetector(tmp_path / "missing.onnx")


def test_which_file_is_the_detector(tmp_path: Path):
    faces = tmp_path / "segmentation" / "faces"
    assert find_landmark_detector(faces) is None
    assert face_detector_choice(tmp_path).kind == "haar" and detector_file(tmp_path) is None
    faces.mkdir(parents=True)
    for name in ("det_500m.onnx", "scrfd_10g_bnkps.onnx", "scrfd_2.5g_bnkps.onnx", "notes.txt"):
        (faces / name).write_bytes(b"")
    assert detector_file(tmp_path) == faces / "scrfd_10g_bnkps.onnx"  # scrfd* before det_*, by name
    (faces / "det_10g.onnx").write_bytes(b"")
    assert detector_file(tmp_path) == faces / "det_10g.onnx"  # buffalo_l's detector first
    assert face_detector_choice(tmp_path).describe() == f"landmark detector {faces / 'det_10g.onnx'}"
    (faces / "config.json").write_text(json.dumps({"detector": "haar", "cascade": "mine.xml"}))
    choice = face_detector_choice(tmp_path)
    assert (choice.kind, choice.path, detector_file(tmp_path)) == ("haar", faces / "mine.xml", None)
    assert choice.describe() == f"Haar fallback {faces / 'mine.xml'} (boxes only, no landmarks)"
    (faces / "config.json").write_text(json.dumps({"detector": "scrfd", "model": "retinaface_r50.onnx"}))
    assert detector_file(tmp_path) == faces / "retinaface_r50.onnx"
    (faces / "config.json").write_text(json.dumps({"detector": "scrfd"}))
    with pytest.raises(FailedPrecondition, match="names no scrfd file"):
        face_detector_choice(tmp_path)


def test_the_tiny_detector_finds_one_upright_face_with_five_landmarks(tmp_path: Path):
    detector = LandmarkFaceDetector(write_face_detector(tmp_path / "det_10g.onnx"))
    image = data.astronaut()
    [face] = detector.detect(image)
    scale = image.shape[1] / INPUT_SIZE
    assert face.box.as_tuple() == pytest.approx(tuple(v * scale for v in TINY_FACE.box()), abs=8)
    points = np.array(face.landmarks)
    assert close(points, (TINY_FACE.points() * scale).tolist(), 8)
    x0, y0, x1, y1 = face.box.as_tuple()
    assert ((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)).all()
    eye_left, eye_right, nose, mouth_left, mouth_right = points
    assert eye_left[0] < nose[0] < eye_right[0] and mouth_left[0] < mouth_right[0]
    assert max(eye_left[1], eye_right[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert detector.detect(image)[0] == face  # deterministic
    other = detector.detect(data.coffee())[0]  # another picture moves it a little
    assert other.landmarks != face.landmarks


def test_tiny_segmenter_faces_carry_landmarks_into_slot_assignment(segmenter):
    image = data.astronaut()
    left = np.zeros((512, 512), dtype=bool)
    left[:, :256] = True
    [face] = segmenter.detect_faces(image, [~left, left])
    assert face.slot_index == 1 and len(face.landmarks) == 5
    assert face.landmarks == segmenter.models.faces.detect(image)[0].landmarks
