"""Fixtures of the integration tests (the servers they need come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multipass_dev.tiny_models import build_tiny_models

MODELS_ROOT = Path(__file__).resolve().parents[2] / ".multipass" / "test-models"


@pytest.fixture(scope="module")
def model_root() -> Path:
    """The tiny models of every real architecture (built once under ``.multipass/test-models``)."""
    return build_tiny_models(MODELS_ROOT)
