"""Faces with landmarks: the faces, face_correct and face_swap passes work on aligned crops and paste back
through the inverse transform; reference images are aligned before they are embedded."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from finishing_testkit import TINY_WORKING_SIZE, face, pixels, scene, spec
from PIL import Image

from multipass.face_detection import ScrfdDetector
from multipass.v1 import common_pb2, prompt_pb2
from multipass_dev.tiny_models.face_detector import write_face_detector
from multipass_diffusion.imaging.face_align import ARCFACE_TEMPLATE, align, arcface_points, ffhq_points, warp
from multipass_diffusion.imaging.face_regions import inpaint_alignment
from multipass_diffusion.nets import components
from multipass_diffusion.nets.face_embedding import (
    FaceEmbedder,
    center_square,
    load_embedder,
    reference_detector_file,
)
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.tune_files import reference_key

SIZE = (256, 192)
#: A face tilted by 25 degrees whose ArcFace square is 0.5 x 112 = 56 pixels, centred near (100, 90).
TILT, SCALE, SHIFT = 25.0, 0.5, (70.0, 55.0)


def tilted_landmarks() -> np.ndarray:
    angle = math.radians(TILT)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * SCALE
    return ARCFACE_TEMPLATE @ rotation.T + SHIFT


def tilted_face(prompt: str = "", loras=()):
    points = tilted_landmarks()
    x0, y0 = points.min(axis=0) - 14
    x1, y1 = points.max(axis=0) + 14
    target = face((x0, y0, x1, y1), prompt, loras)
    target.landmarks.extend(common_pb2.Point(x=x, y=y) for x, y in points)
    return target


def polygon(corners: np.ndarray, grow: int) -> np.ndarray:
    """The image pixels inside ``corners`` (a convex polygon), dilated by ``grow`` pixels."""
    inside = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    cv2.fillConvexPoly(inside, np.round(corners).astype(np.int32), 1)
    return cv2.dilate(inside, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)


def crop_corners(alignment, lo: float, hi: float) -> np.ndarray:
    return alignment.to_image(np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]], dtype=np.float64))


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=2)


def test_faces_repaints_the_upright_face_square_only(engine):
    image = scene(*SIZE)
    output = engine.run(spec("faces", faces=[tilted_face("a smiling face")]), PassInputs(image=image))
    before, after = pixels(image), pixels(output.image)
    assert output.image.size == SIZE
    assert output.metadata["faces"] == "1" and output.metadata["aligned_faces"] == "1"
    alignment, side = inpaint_alignment(
        tilted_landmarks(), TINY_WORKING_SIZE, padding=32, crop_factor=1.0, min_side=0.0
    )
    half = alignment.size / 2
    square = crop_corners(alignment, half - side / 2, half + side / 2)
    feather = math.ceil(3 * 4.0) + 2  # the default mask_blur 4, in image pixels
    region = changed(before, after)
    assert not (region & ~polygon(square, feather)).any()  # nothing outside the (tilted) face square
    inner = polygon(crop_corners(alignment, half - side / 4, half + side / 4), 0)
    assert np.abs(after[inner] - before[inner]).mean() > 2.0
    # The square is tilted: the corners of its axis-aligned bounding box keep their pixels.
    xs, ys = square[:, 0], square[:, 1]
    for x, y in ((xs.min(), ys.min()), (xs.max(), ys.max())):
        x, y = int(round(x)), int(round(y))
        assert (before[y - 2 : y + 3, x - 2 : x + 3] == after[y - 2 : y + 3, x - 2 : x + 3]).all()


def test_face_correct_restores_the_ffhq_aligned_crop_and_strength_zero_keeps_the_image(engine):
    image = scene(*SIZE)
    target = tilted_face()
    output = engine.run(spec("face_correct", faces=[target]), PassInputs(image=image))
    before, after = pixels(image), pixels(output.image)
    assert output.metadata["aligned_faces"] == "1"
    size = int(output.metadata["face_restorer_size"])
    alignment = align(tilted_landmarks(), size, ffhq_points(size))
    region = changed(before, after)
    assert not (region & ~polygon(crop_corners(alignment, 0, size), 1)).any()
    centre = polygon(crop_corners(alignment, 0.4 * size, 0.6 * size), 0)
    assert np.abs(after[centre] - before[centre]).mean() > 2.0
    kept = engine.run(
        spec("face_correct", faces=[target], options={"face_correct_strength": "0"}), PassInputs(image=image)
    )
    assert np.array_equal(pixels(kept.image), before)


def write_references(directory, tune_id: str, seeds) -> tuple[dict, dict]:
    files, paths = {}, {}
    for index, seed in enumerate(seeds):
        path = directory / f"{tune_id}-{index}.png"
        scene(96, 112, seed=seed).save(path)
        key = reference_key(tune_id, index)
        files[key] = common_pb2.ObjectRef(
            bucket="multipass-tunes", key=f"tunes/t/{tune_id}/ref-{index}.png", sha256=f"{seed:064x}"
        )
        paths[key] = path
    return files, paths


def test_face_swap_swaps_the_arcface_aligned_crop(engine, tmp_path):
    files, paths = write_references(tmp_path, "55", seeds=[1])
    image = scene(*SIZE)
    lora = prompt_pb2.LoraRef(tune_id="55", weight=1.0, kind="lora")
    output = engine.run(
        spec("face_swap", faces=[tilted_face("a person", [lora])], tune_files=files),
        PassInputs(image=image, tune_paths=paths),
    )
    before, after = pixels(image), pixels(output.image)
    assert output.metadata["faces_swapped"] == "0:55" and output.metadata["aligned_faces"] == "1"
    alignment = align(tilted_landmarks(), 128, arcface_points(128))
    region = changed(before, after)
    assert region.any()
    assert not (region & ~polygon(crop_corners(alignment, 0, 128), 1)).any()


# reference images ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> ScrfdDetector:
    return ScrfdDetector(write_face_detector(tmp_path_factory.mktemp("detector") / "det_10g.onnx"))


def test_a_reference_image_is_embedded_on_the_crop_aligned_by_its_largest_face(model_root, tiny_detector):
    embedder_path = components.swapper_files(model_root / "diffusion" / "face_swapper")[1]
    aligned = FaceEmbedder(embedder_path, device="cpu", detector=tiny_detector)
    plain = FaceEmbedder(embedder_path, device="cpu")
    picture = scene(120, 150, seed=3)
    crop, was_aligned = aligned.face_crop(picture)
    found = tiny_detector.detect(np.asarray(picture))
    assert was_aligned and len(found) == 1
    expected = warp(
        np.asarray(picture), align(found.landmarks[0], aligned.size, arcface_points(aligned.size))
    )
    assert np.array_equal(crop, expected)
    centre, was_aligned = plain.face_crop(picture)
    assert not was_aligned
    resized = center_square(picture).resize((plain.size, plain.size), Image.Resampling.LANCZOS)
    assert np.array_equal(centre, np.asarray(resized))
    assert not np.allclose(aligned.embed(picture), plain.embed(picture))


def test_a_picture_where_no_face_is_found_falls_back_to_its_central_square(model_root, tmp_path):
    embedder_path = components.swapper_files(model_root / "diffusion" / "face_swapper")[1]
    blind = ScrfdDetector(write_face_detector(tmp_path / "det_10g.onnx", face=None))
    embedder = FaceEmbedder(embedder_path, device="cpu", detector=blind)
    _, was_aligned = embedder.face_crop(scene(64, 64, seed=1))
    assert not was_aligned


def test_the_detector_beside_the_embedder_is_found_and_loaded(model_root, tmp_path):
    swapper = tmp_path / "diffusion" / "face_swapper"
    swapper.mkdir(parents=True)
    for source in components.swapper_files(model_root / "diffusion" / "face_swapper"):
        (swapper / source.name).symlink_to(source)
    assert reference_detector_file(tmp_path) is None
    assert load_embedder(tmp_path, device="cpu", needed_by="a test").detector is None
    write_face_detector(swapper / "det_10g.onnx")
    assert reference_detector_file(tmp_path) == swapper / "det_10g.onnx"
    assert load_embedder(tmp_path, device="cpu", needed_by="a test").detector is not None
    (swapper / "config.json").write_text(json.dumps({"detector": "faces.onnx"}))
    assert reference_detector_file(tmp_path) == swapper / "faces.onnx"
