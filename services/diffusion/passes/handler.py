"""The base class of every pass handler: each hook the engine calls, with its default.

A pass kind is one subclass in one module of this package, listed in :mod:`.registry`. The hooks and
what the engine does with them are described in docs/DIFFUSION.md (*Pass handlers*).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from PIL import Image

from multipass.v1 import diffusion_pb2
from multipass_diffusion.nets.components import fingerprint, installed_capabilities
from multipass_diffusion.passes.context import PassContext, PassInputs

#: Part of the cache key of the finishing passes: bump when a change of their code changes outputs.
FINISHING_VERSION = "multipass-finishing-3"


class PassHandler(ABC):
    #: The pass kind (``PassSpec.kind``) this handler runs; its key in the registry.
    kind: ClassVar[str]
    #: False for a pass without model work: the engine runs it without a runtime, adapters or pass cache.
    uses_models: ClassVar[bool] = True
    #: True for a pass that samples on the engine's component set: a ``<faceid:ID:W>`` ref conditions it.
    uses_faceid: ClassVar[bool] = False
    #: The optional model-directory component the pass loads (:mod:`multipass_diffusion.nets.components`).
    component: ClassVar[str | None] = None
    #: The version of the pass's code in its cache key (None: the engine's version alone).
    code_version: ClassVar[str | None] = None

    @abstractmethod
    def validate(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> None:
        """Raise InvalidInput naming the field for a spec that cannot run, before any model work."""

    @abstractmethod
    def run(self, ctx: PassContext) -> Image.Image:
        """Run the pass; the output image."""

    def steps_to_run(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> int:
        """The denoising steps the pass will run, which its ``started`` event reports (the job's
        ``steps_total``); 0 when only running it tells (tiles, faces, no denoising), and the first
        progress event brings the count."""
        return 0

    def batch_support(self, spec: diffusion_pb2.PassSpec, inputs: PassInputs) -> bool:
        """Whether several seeds of this spec run as one :meth:`run_batch` call."""
        return False

    def run_batch(self, ctx: PassContext, seeds: list[int]) -> list[Image.Image]:
        """One image per seed (``ctx.spec`` with its seed replaced); by default one :meth:`run` per seed."""
        images = []
        for seed in seeds:
            seeded = diffusion_pb2.PassSpec()
            seeded.CopyFrom(ctx.spec)
            seeded.seed = seed
            images.append(self.run(dataclasses.replace(ctx, spec=seeded)))
        return images

    def cache_parts(self, spec: diffusion_pb2.PassSpec, model_dir: Path) -> list[str]:
        """Strings added to the pass-cache key beyond the spec, inputs and model.

        By default the pass's code version and the fingerprint of the component it loads, so new
        weights miss the cache.
        """
        parts = [self.code_version] if self.code_version else []
        if self.component is not None:
            parts.append(f"{self.component}:{fingerprint(model_dir, self.component)}")
        return parts

    def capabilities(self, model_dir: Path) -> list[str]:
        """What ``Diffusion.Info`` lists for this pass besides ``pass:<kind>``: its component, if installed."""
        if self.component is not None and self.component in installed_capabilities(model_dir):
            return [self.component]
        return []
