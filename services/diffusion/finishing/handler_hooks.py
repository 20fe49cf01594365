"""The engine's optional pass-handler hooks, shared by every finishing handler.

- ``capabilities(model_dir)``: the finishing components installed (:func:`installed_capabilities`), for
  ``Diffusion.Info``; every finishing handler reports the whole set and the engine merges them.
- ``cache_parts(spec, model_dir)``: strings added to the pass-cache key beyond the spec: this code's
  version, the fingerprint of the component the pass loads, and the sha256 of tune files the engine does
  not hash itself (faces' LoRAs, reference images).
"""

from __future__ import annotations

from pathlib import Path

from multipass.v1 import diffusion_pb2
from multipass_diffusion.finishing.components import fingerprint, installed_capabilities

#: Bump when a change of the finishing code changes outputs (part of every finishing pass's cache key).
FINISHING_VERSION = "multipass-finishing-1"


class FinishingHandler:
    #: The model-directory component the pass loads, if any.
    component: str | None = None

    def capabilities(self, model_dir: Path) -> list[str]:
        return installed_capabilities(model_dir)

    def cache_parts(self, spec: diffusion_pb2.PassSpec, model_dir: Path) -> list[str]:
        parts = [FINISHING_VERSION]
        if self.component is not None:
            parts.append(f"{self.component}:{fingerprint(model_dir, self.component)}")
        return parts


def tune_file_parts(spec: diffusion_pb2.PassSpec, keys) -> list[str]:
    """``key=sha256`` of the given ``spec.tune_files`` entries, sorted (unknown keys are skipped)."""
    return [
        f"tune-file:{key}={spec.tune_files[key].sha256.lower()}"
        for key in sorted(set(keys))
        if key in spec.tune_files
    ]
