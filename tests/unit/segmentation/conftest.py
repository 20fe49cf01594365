"""Tiny segmentation models built once per session and loaded through the production loader."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from multipass_dev.tiny_models import segmentation as tiny

    root = tmp_path_factory.getbasetemp() / "tiny-segmentation-models"
    tiny.build(root)
    return root


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: Path):
    import torch

    from multipass_segmentation.models import load_models

    return load_models(tiny_model_dir, torch.device("cpu"))


@pytest.fixture
def segmenter(tiny_models):
    from multipass_segmentation.segmenter import Segmenter

    return Segmenter(tiny_models)


@pytest.fixture(scope="session")
def haar_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SAM and grounding detector with the Haar fallback as face detector (finds real faces)."""
    from multipass_dev.tiny_models import segmentation as tiny

    root = tmp_path_factory.mktemp("haar-segmentation-models")
    for name in ("sam", "grounding"):
        (root / "segmentation").mkdir(exist_ok=True)
        (root / "segmentation" / name).symlink_to(tiny_model_dir / "segmentation" / name)
    tiny.build_haar_faces(root / "segmentation" / "faces")
    return root


@pytest.fixture(scope="session")
def haar_models(haar_model_dir: Path):
    import torch

    from multipass_segmentation.models import load_models

    return load_models(haar_model_dir, torch.device("cpu"))
