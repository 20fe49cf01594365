"""The face_correct pass: published restorer files (GFPGAN, RestoreFormer), blend inside the feathered
face ellipse, missing or unusable weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from finishing_testkit import SD15_MODEL, face, pixels, scene, spec

from multipass.errors import FailedPrecondition
from multipass_dev.tiny_models import image_nets
from multipass_diffusion.imaging.face_regions import ellipse_alpha, face_box, face_sigma, square_crop
from multipass_diffusion.nets.face_restorers import FACE_SIZE, load_face_restorer
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


def restorer_dir(root, name: str, state: dict, wrapper: str | None = None):
    image_nets.save_weights(state, root / "diffusion" / "face_restorer" / name, wrapper=wrapper)
    return root


def test_a_restoreformer_file_restores_crops_of_any_size_at_the_face_size(tmp_path):
    root = restorer_dir(tmp_path, "RestoreFormer.pth", image_nets.restoreformer_state(seed=3), "state_dict")
    restorer = load_face_restorer(root, device="cpu", dtype=torch.float32)
    assert (restorer.architecture, restorer.size) == ("RestoreFormer", FACE_SIZE)
    crop = scene(72, 72, seed=4)
    restored = restorer.restore(crop)
    assert restored.size == crop.size
    assert np.abs(pixels(restored) - pixels(crop)).mean() > 5


def test_a_restoreformer_safetensors_file_is_detected_too(tmp_path):
    root = restorer_dir(tmp_path, "RestoreFormer.safetensors", image_nets.restoreformer_state(seed=3))
    assert load_face_restorer(root, device="cpu", dtype=torch.float32).architecture == "RestoreFormer"


@pytest.mark.slow
def test_a_gfpgan_file_loads_at_its_published_size_and_restores_deterministically(tmp_path):
    """GFPGAN v1.4's layout (``{"params_ema": ...}``); its decoder's noise comes from the stored buffers."""
    state = image_nets.gfpgan_state(seed=5)
    assert "stylegan_decoder.noises.noise0" in state and "toRGB.0.weight" in state
    root = restorer_dir(tmp_path, "GFPGANv1.4.pth", state, "params_ema")
    restorer = load_face_restorer(root, device="cpu", dtype=torch.float32)
    assert restorer.architecture == "GFPGAN"
    crop = scene(96, 96, seed=6)
    random_state = torch.random.get_rng_state()
    restored = pixels(restorer.restore(crop))
    # No random number was drawn: the same crop always restores to the same pixels.
    assert torch.equal(torch.random.get_rng_state(), random_state)
    assert restored.shape == (96, 96, 3)
    assert np.abs(restored - pixels(crop)).mean() > 5


def test_an_upscaler_file_is_not_a_face_restorer(tmp_path):
    root = restorer_dir(tmp_path, "RealESRGAN_x4plus.pth", image_nets.esrgan_state(), "params_ema")
    with pytest.raises(FailedPrecondition, match="is a ESRGAN model for SR, not a face restorer") as caught:
        load_face_restorer(root, device="cpu", dtype=torch.float32)
    assert "RealESRGAN_x4plus.pth" in str(caught.value)


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


def test_missing_weights_fail_naming_the_directory(engine, tmp_path, monkeypatch):
    restorer = tmp_path / "diffusion" / "face_restorer"
    restorer.mkdir(parents=True)
    (restorer / "config.json").write_text("{}")
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(spec("face_correct", faces=[face(FACES[0])]), PassInputs(image=scene(*SIZE)))
    assert f"the face_correct pass needs the face_restorer model: {restorer} holds no weights file" in str(
        caught.value
    )


def test_weights_that_do_not_fit_their_architecture_fail_naming_the_file(engine, tmp_path, monkeypatch):
    state = image_nets.restoreformer_state()
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"][:, :16].contiguous()
    restorer_dir(tmp_path, "RestoreFormer.safetensors", state)
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition, match="RestoreFormer.safetensors cannot be read as face restorer"):
        engine.run(spec("face_correct", faces=[face(FACES[0])]), PassInputs(image=scene(*SIZE)))


def test_without_faces_the_image_is_returned_with_a_warning(engine):
    image = scene(*SIZE)
    output = engine.run(spec("face_correct"), PassInputs(image=image))
    assert np.array_equal(pixels(output.image), pixels(image))
    assert any("no face to correct" in w for w in output.warnings)
