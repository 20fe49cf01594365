"""The face_swap pass: inswapper-signature ONNX model, identity from reference images, changes faces only."""

from __future__ import annotations

import numpy as np
import pytest
from finishing_testkit import SD15_MODEL, face, pixels, scene, spec

from multipass.errors import FailedPrecondition, InvalidInput
from multipass.v1 import common_pb2, prompt_pb2
from multipass_diffusion.imaging.face_regions import ellipse_alpha, face_box, face_sigma, square_crop
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.passes.face_swap import FaceSwapPass
from multipass_diffusion.tune_files import reference_key

SIZE = (160, 120)
BOXES = [(20, 20, 60, 70), (100, 40, 140, 90)]


def tune_face(box, tune_id: str = "55"):
    return face(box, "a person", loras=[prompt_pb2.LoraRef(tune_id=tune_id, weight=1.0, kind="lora")])


def references(directory, tune_id: str, seeds) -> tuple[dict, dict]:
    files, paths = {}, {}
    for index, seed in enumerate(seeds):
        path = directory / f"{tune_id}-{index}.png"
        scene(80, 96, seed=seed).save(path)
        key = reference_key(tune_id, index)
        files[key] = common_pb2.ObjectRef(
            bucket="multipass-tunes", key=f"tunes/t/{tune_id}/ref-{index}.png", sha256=f"{seed:064x}"
        )
        paths[key] = path
    return files, paths


def outside_faces(boxes) -> np.ndarray:
    alpha = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    for box in boxes:
        clipped = face_box(face(box), SIZE)
        alpha = np.maximum(
            alpha,
            ellipse_alpha(SIZE, clipped, square_crop(clipped, SIZE, 1.25), sigma=face_sigma(clipped, 0)),
        )
    return alpha == 0


def test_the_tiny_models_have_the_inswapper_and_arcface_signatures(model_root):
    import onnxruntime as ort

    directory = model_root / "diffusion" / "face_swapper"
    swapper = ort.InferenceSession(str(directory / "inswapper_128.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in swapper.get_inputs()] == [
        ("target", [1, 3, 128, 128]),
        ("source", [1, 512]),
    ]
    assert swapper.get_outputs()[0].shape == [1, 3, 128, 128]
    embedder = ort.InferenceSession(str(directory / "arcface.onnx"), providers=["CPUExecutionProvider"])
    assert embedder.get_inputs()[0].shape == [1, 3, 112, 112]
    assert embedder.get_outputs()[0].shape == [1, 512]


def test_faces_take_the_reference_identity_and_nothing_else_changes(engine, tmp_path):
    files, paths = references(tmp_path, "55", seeds=[1, 2])
    image = scene(*SIZE)
    faces = [tune_face(b) for b in BOXES]
    output = engine.run(
        spec("face_swap", faces=faces, tune_files=files), PassInputs(image=image, tune_paths=paths)
    )
    before, after = pixels(image), pixels(output.image)
    outside = outside_faces(BOXES)
    assert np.array_equal(before[outside], after[outside])
    for x0, y0, x1, y1 in BOXES:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert (
            np.abs(after[cy - 5 : cy + 5, cx - 5 : cx + 5] - before[cy - 5 : cy + 5, cx - 5 : cx + 5]).mean()
            > 3
        )
    assert output.metadata["faces_swapped"] == "0:55;1:55"
    again = engine.run(
        spec("face_swap", faces=faces, tune_files=files), PassInputs(image=image, tune_paths=paths)
    )
    assert np.array_equal(after, pixels(again.image))


def test_another_identity_gives_another_face(engine, tmp_path):
    image = scene(*SIZE)
    faces = [tune_face(BOXES[0])]
    first_files, first_paths = references(tmp_path, "55", seeds=[1])
    other_files, other_paths = references(tmp_path, "66", seeds=[7])
    first = engine.run(
        spec("face_swap", faces=faces, tune_files=first_files),
        PassInputs(image=image, tune_paths=first_paths),
    )
    other = engine.run(
        spec("face_swap", faces=faces, tune_files=other_files, options={"face_swap_tune": "66"}),
        PassInputs(image=image, tune_paths=other_paths),
    )
    assert not np.array_equal(pixels(first.image), pixels(other.image))


def test_a_tune_without_reference_images_is_skipped_with_a_warning(engine, tmp_path):
    files, paths = references(tmp_path, "55", seeds=[1])
    image = scene(*SIZE)
    faces = [tune_face(BOXES[0], tune_id="99"), tune_face(BOXES[1])]
    output = engine.run(
        spec("face_swap", faces=faces, tune_files=files), PassInputs(image=image, tune_paths=paths)
    )
    assert any("tune 99 has no reference images" in w for w in output.warnings)
    left = (slice(BOXES[0][1], BOXES[0][3]), slice(BOXES[0][0], BOXES[0][2]))
    assert np.array_equal(pixels(output.image)[left], pixels(image)[left])
    assert output.metadata["faces_swapped"] == "1:55"
    alone = engine.run(spec("face_swap", faces=faces[:1]), PassInputs(image=image))
    assert np.array_equal(pixels(alone.image), pixels(image))
    assert any("no face to swap" in w for w in alone.warnings)


def test_a_face_takes_the_first_of_its_tunes_with_reference_images(engine, tmp_path):
    """A person with a LoRA without references and a FaceID tune with them (``<lora:99:1> <faceid:55:1>``):
    the face takes the FaceID tune's identity rather than being skipped for the LoRA's lack of references."""
    files, paths = references(tmp_path, "55", seeds=[1])
    image = scene(*SIZE)
    loras = [
        prompt_pb2.LoraRef(tune_id="99", weight=1.0, kind="lora"),
        prompt_pb2.LoraRef(tune_id="55", weight=1.0, kind="faceid"),
    ]
    faces = [face(BOXES[0], "a person", loras=loras)]
    output = engine.run(
        spec("face_swap", faces=faces, tune_files=files), PassInputs(image=image, tune_paths=paths)
    )
    assert output.metadata["faces_swapped"] == "0:55"
    assert not output.warnings, output.warnings
    assert not np.array_equal(pixels(output.image), pixels(image))
    lora_only = [face(BOXES[0], "a person", loras=loras[:1] + [prompt_pb2.LoraRef(tune_id="98", weight=1.0)])]
    skipped = engine.run(spec("face_swap", faces=lora_only), PassInputs(image=image))
    assert any("tunes 99, 98 have no reference images" in w for w in skipped.warnings), skipped.warnings


def test_reference_images_that_were_not_fetched_fail(engine, tmp_path):
    files, _ = references(tmp_path, "55", seeds=[1])
    with pytest.raises(FailedPrecondition, match="reference image 55/reference-0"):
        engine.run(
            spec("face_swap", faces=[tune_face(BOXES[0])], tune_files=files), PassInputs(image=scene(*SIZE))
        )


def test_a_missing_swapper_fails_naming_the_file(engine, tmp_path, monkeypatch):
    (tmp_path / "diffusion" / "face_swapper").mkdir(parents=True)
    monkeypatch.setattr(engine.runtimes[SD15_MODEL], "model_dir", tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(spec("face_swap", faces=[tune_face(BOXES[0])]), PassInputs(image=scene(*SIZE)))
    assert str(tmp_path / "diffusion" / "face_swapper" / "inswapper_128.onnx") in str(caught.value)


def test_reference_images_are_part_of_the_cache_key(tmp_path):
    files, _ = references(tmp_path, "55", seeds=[1])
    changed, _ = references(tmp_path, "55", seeds=[2])
    handler = FaceSwapPass()
    first = handler.cache_parts(spec("face_swap", tune_files=files), tmp_path)
    second = handler.cache_parts(spec("face_swap", tune_files=changed), tmp_path)
    assert first != second and any(p.startswith("tune-file:55/reference-0=") for p in first)


def test_reference_pictures_are_decoded_safely(engine, tmp_path):
    files, paths = references(tmp_path, "55", seeds=[1])
    paths[reference_key("55", 0)].write_bytes(b"not an image at all")
    with pytest.raises(InvalidInput, match="reference image"):
        engine.run(
            spec("face_swap", faces=[tune_face(BOXES[0])], tune_files=files),
            PassInputs(image=scene(*SIZE), tune_paths=paths),
        )
