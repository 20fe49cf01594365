"""The face_correct pass: restoration network, blend inside the feathered face ellipse, missing weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from finishing_testkit import SD15_MODEL, face, pixels, scene, spec

from multipass.errors import FailedPrecondition
from multipass_diffusion.imaging.face_regions import ellipse_alpha, face_box, face_sigma, square_crop
from multipass_diffusion.nets.face_restorer import FaceRestorerNet, RestorerConfig
from multipass_diffusion.passes.context import PassInputs

SIZE = (160, 120)
FACES = [(20, 20, 60, 70), (100, 40, 130, 80)]


def union_alpha(boxes, context: float = 1.5) -> np.ndarray:
    alpha = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    for box in boxes:
        clipped = face_box(face(box), SIZE)
        crop = square_crop(clipped, SIZE, context)
        alpha = np.maximum(alpha, ellipse_alpha(SIZE, clipped, crop, sigma=face_sigma(clipped, 0)))
    return alpha


def test_the_network_maps_crops_to_crops_in_range():
    torch.manual_seed(0)
    net = FaceRestorerNet(RestorerConfig(size=32, channels=(4, 8, 16), middle_blocks=1)).eval()
    with torch.no_grad():
        output = net(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert output.shape == (2, 3, 32, 32)
    assert output.abs().max() <= 1.0


def test_config_must_fit_the_levels():
    with pytest.raises(ValueError, match="multiple"):
        RestorerConfig.from_dict({"size": 34, "channels": [4, 8, 16]})
    with pytest.raises(ValueError, match="architecture"):
        RestorerConfig.from_dict({"architecture": "CodeFormer"})


def test_faces_are_restored_inside_their_feathered_ellipses_only(engine):
    image = scene(*SIZE)
    output = engine.run(spec("face_correct", faces=[face(b) for b in FACES]), PassInputs(image=image))
    before, after = pixels(image), pixels(output.image)
    outside = union_alpha(FACES) == 0
    assert np.array_equal(before[outside], after[outside])
    for x0, y0, x1, y1 in FACES:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert (
            np.abs(after[cy - 5 : cy + 5, cx - 5 : cx + 5] - before[cy - 5 : cy + 5, cx - 5 : cx + 5]).mean()
            > 5
        )
    assert output.metadata["faces"] == "2"
    again = engine.run(spec("face_correct", faces=[face(b) for b in FACES]), PassInputs(image=image))
    assert np.array_equal(after, pixels(again.image))


def test_strength_blends_between_original_and_restored(engine):
    image = scene(*SIZE)
    faces = [face(FACES[0])]
    full = pixels(engine.run(spec("face_correct", faces=faces), PassInputs(image=image)).image)
    half = pixels(
        engine.run(
            spec("face_correct", faces=faces, options={"face_correct_strength": "0.5"}),
            PassInputs(image=image),
        ).image
    )
    none = engine.run(
        spec("face_correct", faces=faces, options={"face_correct_strength": "0"}), PassInputs(image=image)
    )
    before = pixels(image)
    assert np.array_equal(pixels(none.image), before)
    centre = (slice(40, 50), slice(35, 45))
    expected = (before[centre] + full[centre]) / 2
    assert np.abs(half[centre] - expected).max() <= 2


def test_missing_weights_fail_naming_the_file(engine, model_root, tmp_path, monkeypatch):
    restorer = tmp_path / "diffusion" / "face_restorer"
    restorer.mkdir(parents=True)
    shutil.copy(model_root / "diffusion" / "face_restorer" / "config.json", restorer / "config.json")
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(spec("face_correct", faces=[face(FACES[0])]), PassInputs(image=scene(*SIZE)))
    assert str(restorer / "model.safetensors") in str(caught.value)


def test_weights_of_another_shape_fail_naming_the_file(engine, model_root, tmp_path, monkeypatch):
    restorer = tmp_path / "diffusion" / "face_restorer"
    shutil.copytree(model_root / "diffusion" / "face_restorer", restorer)
    (restorer / "config.json").write_text('{"size": 64, "channels": [8, 16, 64]}')
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition, match="model.safetensors does not fit"):
        engine.run(spec("face_correct", faces=[face(FACES[0])]), PassInputs(image=scene(*SIZE)))


def test_without_faces_the_image_is_returned_with_a_warning(engine):
    image = scene(*SIZE)
    output = engine.run(spec("face_correct"), PassInputs(image=image))
    assert np.array_equal(pixels(output.image), pixels(image))
    assert any("no face to correct" in w for w in output.warnings)
