"""Face detection with OpenCV's Haar cascade (the fallback) and face-to-slot assignment."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from multipass_segmentation import mask_ops
from multipass_segmentation.faces import Face, HaarFaceDetector, assign_to_slots
from multipass_segmentation.slots import Box

ASTRONAUT_FACE = (177, 67, 270, 160)  # where the frontal cascade puts her face


@pytest.fixture(scope="module")
def detector() -> HaarFaceDetector:
    return HaarFaceDetector.packaged()


def test_finds_the_astronauts_face(detector):
    faces = detector.detect(data.astronaut())
    assert len(faces) == 1
    assert faces[0].box.as_tuple() == pytest.approx(ASTRONAUT_FACE, abs=6)
    assert 0.5 < faces[0].score <= 1.0
    assert faces[0].slot_index == -1


def test_detection_on_a_downscaled_copy_maps_back_to_image_pixels():
    small_side = HaarFaceDetector.packaged(max_side=256)
    faces = small_side.detect(data.astronaut())
    assert len(faces) == 1
    assert faces[0].box.as_tuple() == pytest.approx(ASTRONAUT_FACE, abs=12)


def test_no_face_in_the_cameraman_profile_or_a_flat_image(detector):
    assert detector.detect(data.camera()) == []
    assert detector.detect(np.full((200, 200, 3), 90, dtype=np.uint8)) == []


def test_astronaut_face_goes_to_the_slot_whose_mask_holds_it(haar_models):
    from multipass_segmentation.segmenter import Segmenter

    segmenter = Segmenter(haar_models)
    image = data.astronaut()
    left = np.zeros((512, 512), dtype=bool)
    left[:, :256] = True  # covers columns 177..255 of the face: 79 of 93
    right = ~left
    faces = segmenter.detect_faces(image, [right, left])
    assert [f.slot_index for f in faces] == [1]
    faces = segmenter.detect_faces(image, [left, right])
    assert [f.slot_index for f in faces] == [0]
    faces = segmenter.detect_faces(image, [])
    assert [f.slot_index for f in faces] == [-1]


def test_assignment_by_largest_overlap_with_threshold_and_missing_slots():
    shape = (100, 100)
    face = Face(Box(40, 40, 60, 60), 0.9)  # 400 pixels
    a = mask_ops.box_mask(shape, (40, 40, 46, 60))  # 120 px = 30%
    b = mask_ops.box_mask(shape, (46, 40, 60, 60))  # 280 px = 70%
    assert assign_to_slots([face], [a, b])[0].slot_index == 1
    assert assign_to_slots([face], [a, None])[0].slot_index == 0
    assert assign_to_slots([face], [a, None], min_overlap=0.5)[0].slot_index == -1
    nobody = np.zeros(shape, dtype=bool)
    assert assign_to_slots([face], [nobody, nobody])[0].slot_index == -1
    # ties go to the lower slot
    half_left = mask_ops.box_mask(shape, (40, 40, 50, 60))
    half_right = mask_ops.box_mask(shape, (50, 40, 60, 60))
    assert assign_to_slots([face], [half_right, half_left])[0].slot_index == 0
    kept = assign_to_slots([face], [b])[0]
    assert kept.box == face.box and kept.score == face.score
    marked = Face(Box(40, 40, 60, 60), 0.9, landmarks=((45, 48), (55, 48), (50, 52), (46, 56), (54, 56)))
    assert assign_to_slots([marked], [a, b])[0].landmarks == marked.landmarks


def test_haar_faces_have_no_landmarks(detector):
    assert not detector.has_landmarks
    assert all(face.landmarks == () for face in detector.detect(data.astronaut()))
