"""A tiny random-weight face detector with SCRFD's inputs and outputs (``det_10g.onnx``'s layout).

``write_face_detector(path)`` writes an ONNX graph built with ``onnx.helper``: input ``input.1``
1x3x160x160; three stride-2 convolutions (the first of stride 8) give feature maps of strides 8, 16 and
32; per stride, 1x1 convolutions give two anchors' scores (sigmoid), four box distances and ten landmark
offsets, transposed and reshaped to SCRFD's (rows, 1) / (rows, 4) / (rows, 10) tensors; nine outputs,
scores first, then boxes, then landmarks, by stride. It is loaded and decoded by the production code
(:class:`multipass.face_detection.ScrfdDetector`).

Random weights alone would find faces anywhere or nowhere. The score head adds a fixed prior instead: one
location of the stride-16 map (both anchors) scores about 1, every other about 0, so every image has
exactly one face (after NMS), where :data:`TINY_FACE` says; the image moves its box and landmarks by a
fraction of a pixel to a few pixels through small random head weights, so detection still depends on the
pixels. This lets noise images from the tiny diffusion models exercise the landmark-aligned face passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_SIZE = 160
STRIDES = (8, 16, 32)
ANCHORS = 2
CHANNELS = 8
#: Score logits of the prior: the face's location and everywhere else.
FACE_LOGIT = 6.0
BACKGROUND_LOGIT = -8.0
#: Standard deviation of the random head weights (the image's influence on boxes and landmarks).
HEAD_WEIGHT_STD = 0.02


@dataclass(frozen=True)
class TinyFace:
    """Where the tiny detector's face is, in its input pixels before the image's small influence."""

    stride: int
    row: int
    column: int
    #: Left, top, right, bottom distances from the anchor centre, in strides.
    distances: tuple[float, float, float, float]
    #: Offsets of the five landmarks from the anchor centre, in strides (x, y per point).
    landmarks: tuple[tuple[float, float], ...]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.column * self.stride, self.row * self.stride)

    def box(self) -> tuple[float, float, float, float]:
        cx, cy = self.centre
        left, top, right, bottom = (d * self.stride for d in self.distances)
        return (cx - left, cy - top, cx + right, cy + bottom)

    def points(self) -> np.ndarray:
        cx, cy = self.centre
        return np.array([(cx + dx * self.stride, cy + dy * self.stride) for dx, dy in self.landmarks])


#: An upright face left of the centre in the upper half: eyes level, nose below them, mouth below it.
TINY_FACE = TinyFace(
    stride=16,
    row=3,
    column=4,
    distances=(1.6, 1.8, 1.6, 2.2),
    landmarks=((-0.6, -0.35), (0.6, -0.35), (0.0, 0.25), (-0.5, 0.95), (0.5, 0.95)),
)


def write_face_detector(path: Path, *, seed: int = 7, face: TinyFace | None = TINY_FACE) -> Path:
    """Write the tiny SCRFD-layout detector to ``path`` (replaced) and return it.

    ``face=None`` writes one that finds no face in any image.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    initializers, nodes = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name=name))
        return name

    def conv(name: str, source: str, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> str:
        nodes.append(
            helper.make_node(
                "Conv",
                [source, constant(f"{name}.weight", weight), constant(f"{name}.bias", bias)],
                [name],
                kernel_shape=list(weight.shape[2:]),
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return name

    def relu(source: str) -> str:
        nodes.append(helper.make_node("Relu", [source], [source + ".relu"]))
        return source + ".relu"

    def rows(name: str, source: str, columns: int) -> str:
        nodes.append(helper.make_node("Transpose", [source], [name + ".nhwc"], perm=[0, 2, 3, 1]))
        shape = numpy_helper.from_array(np.array([-1, columns], dtype=np.int64), name=name + ".shape")
        initializers.append(shape)
        nodes.append(helper.make_node("Reshape", [name + ".nhwc", shape.name], [name]))
        return name

    features, previous, channels = {}, "input.1", 3
    for level, stride in enumerate(STRIDES):
        step = stride if level == 0 else 2
        weight = rng.normal(0.0, (2.0 / (9 * channels)) ** 0.5, (CHANNELS, channels, 3, 3))
        previous = relu(conv(f"backbone{stride}", previous, weight, np.zeros(CHANNELS), step, 1))
        features[stride], channels = previous, CHANNELS

    def head_weight(outputs: int) -> np.ndarray:
        return rng.normal(0.0, HEAD_WEIGHT_STD, (outputs, CHANNELS, 1, 1))

    scores, boxes, points = [], [], []
    for stride in STRIDES:
        side = INPUT_SIZE // stride
        logits = conv(
            f"score{stride}.logits", features[stride], head_weight(ANCHORS), np.zeros(ANCHORS), 1, 0
        )
        prior = np.full((1, ANCHORS, side, side), BACKGROUND_LOGIT)
        if face is not None and stride == face.stride:
            prior[0, :, face.row, face.column] = FACE_LOGIT
        nodes.append(
            helper.make_node("Add", [logits, constant(f"score{stride}.prior", prior)], [f"score{stride}.sum"])
        )
        nodes.append(helper.make_node("Sigmoid", [f"score{stride}.sum"], [f"score{stride}.sigmoid"]))
        scores.append(rows(f"score_{stride}", f"score{stride}.sigmoid", 1))
        box_bias = np.tile(np.array((face or TINY_FACE).distances), ANCHORS)
        raw_box = conv(f"bbox{stride}.raw", features[stride], head_weight(4 * ANCHORS), box_bias, 1, 0)
        boxes.append(rows(f"bbox_{stride}", raw_box, 4))
        point_bias = np.tile(np.array((face or TINY_FACE).landmarks).reshape(-1), ANCHORS)
        raw_points = conv(f"kps{stride}.raw", features[stride], head_weight(10 * ANCHORS), point_bias, 1, 0)
        points.append(rows(f"kps_{stride}", raw_points, 10))

    outputs = [
        helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [(INPUT_SIZE // stride) ** 2 * ANCHORS, columns]
        )
        for names, columns in ((scores, 1), (boxes, 4), (points, 10))
        for name, stride in zip(names, STRIDES, strict=True)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="multipass")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    onnx.save(model, str(staging))
    staging.replace(path)
    return path
