"""Tiny random-weight models of the real architectures, written in the model-directory layout.

Tests and the default local stack load them through the production loading code.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_models(root: Path) -> Path:
    """Write every tiny model under ``root`` (once; each factory keeps a marker file). Returns ``root``."""
    # Imported here, not above: the constants of ``tiny_models.diffusion`` are read without torch.
    from multipass_dev.tiny_models import diffusion, finishing, segmentation

    root = Path(root)
    diffusion.build(root)
    finishing.build(root)
    segmentation.build(root)
    return root
