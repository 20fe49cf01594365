"""Model directory layout, the tiny model factory, loading failures and the settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from multipass.errors import ConfigError, FailedPrecondition
from multipass_dev.tiny_models import segmentation as tiny
from multipass_dev.tiny_models.face_detector import write_face_detector
from multipass_segmentation.faces import HaarFaceDetector, LandmarkFaceDetector
from multipass_segmentation.grounding import GroundingDinoDetector
from multipass_segmentation.models import (
    find_sam_checkpoint,
    load_detector,
    load_face_detector,
    load_models,
    load_sam,
)
from multipass_segmentation.settings import SegmentationSettings

CPU = torch.device("cpu")


def copy_models(source: Path, target: Path) -> Path:
    shutil.copytree(source / "segmentation", target / "segmentation")
    return target


def test_tiny_models_layout_and_idempotent_build(tiny_model_dir: Path):
    base = tiny_model_dir / "segmentation"
    assert (base / tiny.MARKER).read_text().strip() == tiny.VERSION
    sam_config = json.loads((base / "sam" / "config.json").read_text())
    assert (
        sam_config["image_size"] == 256
        and sam_config["encoder_embed_dim"] == 32
        and sam_config["encoder_depth"] == 2
    )
    assert (base / "sam" / sam_config["weights"]).is_file()
    grounding = json.loads((base / "grounding" / "config.json").read_text())
    assert grounding["model_type"] == "grounding-dino" and grounding["decoder_layers"] == 2
    assert sorted(p.name for p in (base / "faces").iterdir()) == ["det_10g.onnx"]
    stamp = (base / "sam" / "sam_tiny.pth").stat().st_mtime_ns
    tiny.build(tiny_model_dir)
    assert (base / "sam" / "sam_tiny.pth").stat().st_mtime_ns == stamp


def test_loaded_models_are_the_tiny_architectures(tiny_models):
    assert tiny_models.sam.image_encoder.img_size == 256
    assert isinstance(tiny_models.detector, GroundingDinoDetector)
    assert tiny_models.detector.model.config.decoder_layers == 2
    assert tiny_models.faces_source.name == "det_10g.onnx"
    assert tiny_models.faces.has_landmarks
    assert tiny_models.faces_choice.describe() == f"landmark detector {tiny_models.faces_source}"
    assert tiny_models.sam_source.name == "sam_tiny.pth"


def test_missing_sam_is_a_failed_precondition_naming_the_files(tmp_path: Path, tiny_model_dir: Path):
    root = copy_models(tiny_model_dir, tmp_path)
    shutil.rmtree(root / "segmentation" / "sam")
    with pytest.raises(FailedPrecondition) as caught:
        load_models(root, CPU)
    message = str(caught.value)
    assert "sam_vit_b.pth" in message and str(root / "segmentation" / "sam") in message


def test_missing_weights_file_is_named(tmp_path: Path, tiny_model_dir: Path):
    root = copy_models(tiny_model_dir, tmp_path)
    (root / "segmentation" / "sam" / "sam_tiny.pth").unlink()
    with pytest.raises(FailedPrecondition, match="sam_tiny.pth"):
        load_sam(root / "segmentation" / "sam", CPU)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path, tiny_model_dir: Path):
    root = copy_models(tiny_model_dir, tmp_path)
    config_path = root / "segmentation" / "sam" / "config.json"
    config = json.loads(config_path.read_text())
    config["encoder_depth"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(FailedPrecondition, match="do not load"):
        load_sam(root / "segmentation" / "sam", CPU)
    (root / "segmentation" / "sam" / "sam_tiny.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FailedPrecondition, match="do not load"):
        load_sam(root / "segmentation" / "sam", CPU)


def test_bad_sam_configurations(tmp_path: Path):
    sam_dir = tmp_path / "sam"
    sam_dir.mkdir()
    (sam_dir / "w.pth").write_bytes(b"")
    (sam_dir / "config.json").write_text(
        json.dumps({"variant": "custom", "weights": "w.pth", "image_size": 256})
    )
    with pytest.raises(FailedPrecondition, match="lacks patch_size"):
        load_sam(sam_dir, CPU)
    (sam_dir / "config.json").write_text(json.dumps({"variant": "vit_x", "weights": "w.pth"}))
    with pytest.raises(FailedPrecondition, match="unknown SAM variant 'vit_x'"):
        load_sam(sam_dir, CPU)
    (sam_dir / "config.json").write_text(json.dumps({"variant": "custom"}))
    with pytest.raises(FailedPrecondition, match="names no weights file"):
        load_sam(sam_dir, CPU)
    (sam_dir / "config.json").write_text("{not json")
    with pytest.raises(FailedPrecondition, match="not readable JSON"):
        load_sam(sam_dir, CPU)


def test_official_checkpoint_names_pick_the_registry_variant(tmp_path: Path):
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"")
    assert find_sam_checkpoint(tmp_path) == (tmp_path / "sam_vit_l_0b3195.pth", {"variant": "vit_l"})
    (tmp_path / "sam_vit_h.pth").write_bytes(b"")
    assert find_sam_checkpoint(tmp_path)[1] == {"variant": "vit_h"}
    (tmp_path / "config.json").write_text(json.dumps({"variant": "vit_b", "weights": "mine.pth"}))
    assert find_sam_checkpoint(tmp_path) == (
        tmp_path / "mine.pth",
        {"variant": "vit_b", "weights": "mine.pth"},
    )


def test_missing_or_unsupported_detector(tmp_path: Path, tiny_model_dir: Path):
    with pytest.raises(FailedPrecondition, match=r"grounding detector missing: .*grounding/config.json"):
        load_detector(tmp_path / "grounding", CPU)
    root = copy_models(tiny_model_dir, tmp_path)
    config_path = root / "segmentation" / "grounding" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "detr"
    config_path.write_text(json.dumps(config))
    with pytest.raises(FailedPrecondition, match="'detr' is not supported"):
        load_detector(root / "segmentation" / "grounding", CPU)


def test_face_detector_falls_back_to_opencvs_cascade_and_checks_its_config(tmp_path: Path):
    for faces_dir in (tmp_path / "faces", tmp_path / "empty"):  # absent, then empty
        if faces_dir.name == "empty":
            faces_dir.mkdir()
        detector, choice = load_face_detector(faces_dir)
        assert isinstance(detector, HaarFaceDetector) and not detector.has_landmarks
        assert detector.source.name == "haarcascade_frontalface_default.xml" and detector.source.is_file()
        assert choice.describe() == "Haar fallback OpenCV's frontal-face cascade (boxes only, no landmarks)"
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "config.json").write_text(json.dumps({"detector": "haar", "cascade": "missing.xml"}))
    with pytest.raises(FailedPrecondition, match="missing.xml"):
        load_face_detector(faces)
    (faces / "missing.xml").write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(FailedPrecondition, match="could not be loaded"):
        load_face_detector(faces)
    (faces / "config.json").write_text(json.dumps({"detector": "yunet"}))
    with pytest.raises(FailedPrecondition, match="'yunet' is not supported"):
        load_face_detector(faces)
    (faces / "config.json").write_text(json.dumps({"detector": "scrfd", "model": "retinaface.onnx"}))
    with pytest.raises(FailedPrecondition, match="retinaface.onnx"):
        load_face_detector(faces)


def test_a_landmark_detector_file_replaces_the_haar_fallback(tmp_path: Path):
    faces = tmp_path / "faces"
    write_face_detector(faces / "scrfd_2.5g_bnkps.onnx")
    detector, choice = load_face_detector(faces)
    assert isinstance(detector, LandmarkFaceDetector) and choice.has_landmarks
    assert detector.source == faces / "scrfd_2.5g_bnkps.onnx"
    (faces / "scrfd_2.5g_bnkps.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(FailedPrecondition, match="scrfd_2.5g_bnkps.onnx does not load"):
        load_face_detector(faces)


def test_settings_from_env(tmp_path: Path):
    settings = SegmentationSettings.from_env(
        {
            "MULTIPASS_MODEL_DIR": str(tmp_path),
            "MULTIPASS_SEGMENTATION_GRPC_ADDR": "0.0.0.0:6000",
            "MULTIPASS_SEGMENTATION_METRICS_PORT": "0",
            "MULTIPASS_SEGMENTATION_BOX_THRESHOLD": "0.35",
            "MULTIPASS_SEGMENTATION_FACE_PHRASES": "false",
            "MULTIPASS_S3_ENDPOINT": "minio:9000",
        }
    )
    assert settings.model_dir == tmp_path
    assert settings.grpc_addr == "0.0.0.0:6000" and settings.metrics_port == 0
    assert settings.box_threshold == 0.35 and settings.text_threshold == 0.25
    assert settings.face_phrases is False
    assert settings.s3.endpoint == "minio:9000"


def test_settings_name_every_bad_variable(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        SegmentationSettings.from_env(
            {
                "MULTIPASS_SEGMENTATION_DEVICE": "tpu",
                "MULTIPASS_SEGMENTATION_BOX_THRESHOLD": "2",
                "MULTIPASS_SEGMENTATION_GRPC_ADDR": "nowhere",
            }
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "MULTIPASS_MODEL_DIR",
        "MULTIPASS_SEGMENTATION_DEVICE",
        "MULTIPASS_SEGMENTATION_BOX_THRESHOLD",
        "MULTIPASS_SEGMENTATION_GRPC_ADDR",
    }
    with pytest.raises(ConfigError, match="MULTIPASS_MODEL_DIR"):
        SegmentationSettings.from_env({"MULTIPASS_MODEL_DIR": str(tmp_path / "absent")})
