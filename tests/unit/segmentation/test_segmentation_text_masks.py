"""Text masks through the real code path: tiny GroundingDINO -> boxes -> tiny SAM -> mask operations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from multipass.errors import InvalidInput
from multipass_segmentation import mask_ops
from multipass_segmentation.grounding import _detector_text, _token_spans, split_phrases
from multipass_segmentation.mask_ops import Dilation
from multipass_segmentation.segmenter import Segmenter, SegmenterOptions, TextMaskSpec

LOW = 0.01  # with random weights, thresholds this low always find boxes


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.random((160, 224, 3)) * 255).astype(np.uint8)


def grown_union(shape, boxes, margin=0.1) -> np.ndarray:
    union = np.zeros(shape, dtype=bool)
    for b in boxes:
        dx, dy = margin * b.width, margin * b.height
        union |= mask_ops.box_mask(shape, (b.x0 - dx, b.y0 - dy, b.x1 + dx, b.y1 + dy))
    return union


def test_split_phrases():
    assert split_phrases(" Red Shirt, hair. hat;  red shirt ") == ["red shirt", "hair", "hat"]
    assert split_phrases("windows door") == ["windows door"]
    assert split_phrases(" , . ; ") == []


def test_phrase_token_spans_cover_exactly_each_phrase(tiny_models):
    text, spans = _detector_text(["person", "red shirt"])
    assert text == "person. red shirt."
    tokenizer = tiny_models.detector.processor.tokenizer
    encoded = tokenizer(text, return_offsets_mapping=True)
    token_spans = _token_spans(encoded["offset_mapping"], spans)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert [tokens[i] for i in token_spans[0]] == ["person"]
    assert [tokens[i] for i in token_spans[1]] == ["red", "shirt"]


def test_detector_finds_boxes_per_phrase_inside_the_image(tiny_models, scene):
    found = tiny_models.detector.detect(scene, ["person", "shirt"], LOW, LOW)
    assert {d.phrase for d in found} == {"person", "shirt"}
    for d in found:
        assert 0 <= d.box.x0 < d.box.x1 <= 224 and 0 <= d.box.y0 < d.box.y1 <= 160
        assert LOW < d.score <= 1.0
    assert tiny_models.detector.detect(scene, ["person"], 1.0, LOW) == []


def test_text_mask_is_the_union_of_sam_masks_inside_the_detected_boxes(segmenter, tiny_models, scene):
    spec = TextMaskSpec("person", box_threshold=LOW, text_threshold=LOW)
    result = segmenter.text_mask(scene, spec)
    [mask] = result.masks
    assert mask.label == "prompt" and mask.index == 0 and not mask.fallback and not mask.empty
    assert mask.mask.shape == (160, 224) and mask.mask.any()
    found = tiny_models.detector.detect(scene, ["person"], LOW, LOW)
    assert not (mask.mask & ~grown_union((160, 224), [d.box for d in found])).any()
    assert mask.score == pytest.approx(max(d.score for d in found))
    assert result.warnings == []


def test_nothing_found_gives_an_empty_mask_and_a_warning(segmenter, scene):
    result = segmenter.text_mask(scene, TextMaskSpec("person", box_threshold=1.0))
    [mask] = result.masks
    assert mask.empty and not mask.mask.any() and mask.score == 0.0
    assert any("no box found for 'person'" in w for w in result.warnings)
    inverted = segmenter.text_mask(scene, TextMaskSpec("person", invert=True, box_threshold=1.0)).masks[0]
    assert inverted.mask.all() and inverted.empty


def test_prompt_minus_itself_is_empty_and_its_inverse_is_everything(segmenter, scene):
    spec = TextMaskSpec("person", negative="person", box_threshold=LOW, text_threshold=LOW)
    assert not segmenter.text_mask(scene, spec).masks[0].mask.any()
    spec = TextMaskSpec("person", negative="person", invert=True, box_threshold=LOW, text_threshold=LOW)
    assert segmenter.text_mask(scene, spec).masks[0].mask.all()


def test_negative_then_dilate_then_invert(segmenter, scene):
    base = dict(box_threshold=LOW, text_threshold=LOW)
    positive = segmenter.text_mask(scene, TextMaskSpec("person", **base)).masks[0].mask
    negative = segmenter.text_mask(scene, TextMaskSpec("hair", **base)).masks[0].mask
    combined = segmenter.text_mask(
        scene, TextMaskSpec("person", negative="hair", dilation=Dilation(3), invert=True, **base)
    ).masks[0]
    assert np.array_equal(combined.mask, ~mask_ops.dilate_erode(positive & ~negative, 3))


def test_erosion_that_empties_the_mask_is_reported(segmenter, scene):
    result = segmenter.text_mask(
        scene,
        TextMaskSpec("person", dilation=Dilation(-100, percent=True), box_threshold=LOW, text_threshold=LOW),
    )
    assert result.masks[0].empty and not result.masks[0].mask.any()
    assert any("vanished" in w for w in result.warnings)


def test_face_phrase_uses_the_face_detector(segmenter):
    astronaut = data.astronaut()
    result = segmenter.text_mask(astronaut, TextMaskSpec("face"))
    [mask] = result.masks
    faces = segmenter.models.faces.detect(astronaut)
    assert len(faces) == 1
    assert mask.score == pytest.approx(faces[0].score)
    assert mask.mask.any()
    assert not (mask.mask & ~grown_union(astronaut.shape[:2], [faces[0].box])).any()
    head = segmenter.text_mask(astronaut, TextMaskSpec("head")).masks[0]
    assert head.mask.any()
    face_box = faces[0].box
    # the head box reaches above the face box
    assert mask_ops.bounding_box(head.mask)[1] < face_box.y0 - 0.1 * face_box.height


def test_face_phrase_goes_to_the_grounding_detector_when_disabled(tiny_models):
    astronaut = data.astronaut()
    grounded = Segmenter(tiny_models, SegmenterOptions(face_phrases=False))
    spec = TextMaskSpec("face", box_threshold=LOW, text_threshold=LOW)
    mask = grounded.text_mask(astronaut, spec).masks[0]
    found = tiny_models.detector.detect(astronaut, ["face"], LOW, LOW)
    assert mask.score == pytest.approx(max(d.score for d in found))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (TextMaskSpec(""), "text.prompt"),
        (TextMaskSpec(" , . "), "text.prompt"),
        (TextMaskSpec("a" * 241), "text.prompt"),
        (TextMaskSpec("person", negative="b" * 241), "text.negative"),
        (TextMaskSpec("person", box_threshold=1.5), "text.box_threshold"),
        (TextMaskSpec("person", text_threshold=-0.1), "text.text_threshold"),
        (TextMaskSpec("person", dilation=Dilation(150, percent=True)), "text.dilate_percent"),
    ],
)
def test_bad_text_requests_name_the_field(segmenter, scene, spec, field):
    with pytest.raises(InvalidInput) as caught:
        segmenter.text_mask(scene, spec)
    assert [v.field for v in caught.value.violations] == [field]


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from multipass_dev.tiny_models.segmentation import build_owlv2
    from multipass_segmentation.models import load_detector

    directory = tmp_path_factory.mktemp("owlv2") / "grounding"
    build_owlv2(directory)
    detector, source = load_detector(directory, torch.device("cpu"))
    assert source == directory / "config.json"
    return detector


def test_owlv2_boxes_are_scaled_from_its_padded_square(owlv2):
    import torch

    from multipass_segmentation.grounding import Owlv2Detector

    assert isinstance(owlv2, Owlv2Detector)
    tall = (np.random.default_rng(5).random((150, 90, 3)) * 255).astype(np.uint8)
    found = owlv2.detect(tall, ["person", "red shirt"], LOW, LOW)
    assert {d.phrase for d in found} == {"person", "red shirt"}
    inputs = owlv2.processor(
        text=[["person", "red shirt"]], images=Image.fromarray(tall), return_tensors="pt"
    )
    with torch.inference_mode():
        outputs = owlv2.model(**inputs)
    reference = owlv2.processor.post_process_grounded_object_detection(
        outputs, threshold=LOW, target_sizes=[(150, 90)]
    )[0]
    expected = [tuple(float(v) for v in box.clamp(min=0).tolist()) for box in reference["boxes"]]
    for detection in found:
        x0, y0, x1, y1 = detection.box.as_tuple()
        assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 150
        assert any(
            abs(x0 - e[0]) < 1e-3
            and abs(y0 - e[1]) < 1e-3
            and abs(x1 - min(e[2], 90)) < 1e-3
            and abs(y1 - min(e[3], 150)) < 1e-3
            for e in expected
        )
    assert owlv2.detect(tall, ["person"], 1.0, 0.0) == []


def test_text_mask_with_owlv2(tiny_models, owlv2, scene):
    import dataclasses

    segmenter = Segmenter(dataclasses.replace(tiny_models, detector=owlv2))
    result = segmenter.text_mask(scene, TextMaskSpec("person", box_threshold=LOW))
    mask = result.masks[0]
    found = owlv2.detect(scene, ["person"], LOW, 0.25)
    assert any(d.box.width >= 16 and d.box.height >= 16 for d in found)
    assert mask.mask.any() and not mask.empty
    assert not (mask.mask & ~grown_union((160, 224), [d.box for d in found])).any()
    assert mask.score == pytest.approx(max(d.score for d in found))
