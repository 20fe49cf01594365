"""What a pass works with: its spec, decoded inputs, the model's runtime, and the step monitor."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from multipass.errors import Cancelled
from multipass.v1 import diffusion_pb2

if TYPE_CHECKING:
    from multipass_diffusion.adapters import AdapterCache
    from multipass_diffusion.faceid import FaceIdRequest
    from multipass_diffusion.pipelines import ComponentSet
    from multipass_diffusion.runtime import ModelRuntime

ProgressFn = Callable[[int, int], None]


@dataclass
class PassInputs:
    """Decoded input images of a pass (the worker fetches them; tests build them)."""

    image: Image.Image | None = None
    #: Single-channel ("L"), white = repaint.
    mask: Image.Image | None = None
    control_image: Image.Image | None = None
    #: Local files of the spec's ``tune_files`` by the same keys (tune id; ``<tune_id>/reference-<k>``).
    tune_paths: dict[str, Path] = field(default_factory=dict)
    #: Composite pass: (image RGB, mask "L") of each ``spec.layers`` entry, in order.
    layers: list[tuple[Image.Image, Image.Image]] = field(default_factory=list)


class StepMonitor:
    """Reports denoising progress and stops a cancelled pass between two steps."""

    def __init__(self, progress: ProgressFn | None = None, cancel: threading.Event | None = None):
        self._progress = progress
        self._cancel = cancel
        self.steps_run = 0
        #: A pass-cache lookup running beside the pass (a future of the cached image or None).
        self.lookup: concurrent.futures.Future | None = None

    def check(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("pass cancelled")
        lookup = self.lookup
        if lookup is not None and lookup.done() and not lookup.cancelled() and lookup.exception() is None:
            found = lookup.result()
            if found is not None:
                raise FoundInCache(found)

    def callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        """``callback_on_step_end`` of the diffusers pipelines."""
        self.steps_run += 1
        total = int(getattr(pipe, "_num_timesteps", 0) or 0) or step + 1
        if self._progress is not None:
            self._progress(step + 1, total)
        self.check()
        return tensors


class FoundInCache(Exception):  # noqa: N818 - a signal between two steps, not an error
    """The pass-cache lookup started beside the pass found its output: stop and use that image."""

    def __init__(self, image):
        super().__init__("the pass's output was found in the pass cache")
        self.image = image


@dataclass
class PassContext:
    spec: diffusion_pb2.PassSpec
    inputs: PassInputs
    runtime: ModelRuntime
    components: ComponentSet
    adapters: AdapterCache
    monitor: StepMonitor
    working_size: int
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    #: The identity the pipelines are conditioned on (``<faceid:ID:W>``), attached by the engine.
    faceid: FaceIdRequest | None = None

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
