"""Tiny random-weight models of the real architectures, written in the model-directory layout.

Tests and the default local stack load them through the production loading code.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def build_tiny_models(root: Path) -> None:
    """Write every tiny model under ``root`` (once; each factory keeps a marker file)."""
    from multipass.tiny_models import diffusion

    diffusion.build(Path(root))
    try:
        segmentation = importlib.import_module("multipass.tiny_models.segmentation")
    except ModuleNotFoundError as error:
        if error.name != "multipass.tiny_models.segmentation":
            raise
        return
    segmentation.build(Path(root))
