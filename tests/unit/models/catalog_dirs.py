"""Model directories for the catalog tests: the manifest's targets written as placeholder files.

The feature check reads names and a few JSON fields, never weights, so a directory of placeholders laid
out as a pull would lay it out says exactly what a real pull gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from multipass.model_catalog.manifest import Manifest, Profile

PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def placeholder(target: str, family: str) -> bytes:
    name = target.rsplit("/", 1)[-1]
    if name == "model_index.json":
        return json.dumps({"_class_name": PIPELINES[family or "sd15"]}).encode()
    if target == "segmentation/grounding/config.json":
        return json.dumps({"model_type": "grounding-dino"}).encode()
    if name.endswith(".json"):
        return b"{}"
    return b"placeholder weights"


def write_profiles(root: Path, profiles: Iterable[Profile]) -> Path:
    for profile in profiles:
        for item in profile.files:
            path = root / item.target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(placeholder(item.target, profile.family))
    return root


def full_directory(root: Path, manifest: Manifest) -> Path:
    """Every profile of the manifest, pulled."""
    return write_profiles(root, manifest.profiles.values())
