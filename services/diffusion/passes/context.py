"""What a pass works with: its spec, decoded inputs, the model's runtime, and the step monitor."""

from __future__ import annotations

import concurrent.futures
import math
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
    #: Who may share the pass's cached output (the worker sets the request's tenant): part of the
    #: pass-cache key, so one tenant's output never answers, nor reveals, another tenant's pass.
    cache_scope: str = ""


class StepMonitor:
    """Reports denoising progress and stops a cancelled pass between two steps.

    Progress is in the user's steps (``spec.steps``, or ``steps × strength`` from an input image), never
    in model evaluations: see :func:`steps_done`. ``steps_run`` counts the same steps.
    """

    def __init__(self, progress: ProgressFn | None = None, cancel: threading.Event | None = None):
        self._progress = progress
        self._cancel = cancel
        self.steps_run = 0
        #: Steps of the progress already reported in the current pipeline run.
        self._done = 0
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
        """``callback_on_step_end`` of the diffusers pipelines (once per model evaluation ``step``)."""
        if step == 0:
            self.begin()  # seeds run one after the other share the monitor: each run counts from 0
        self.advance(*steps_done(pipe, step))
        return tensors

    def begin(self, done: int = 0) -> None:
        """A pipeline run starts, with ``done`` steps of the progress behind it (earlier parts)."""
        self._done = done

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps are complete: count and report the new ones, then check for a
        cancel (also when no step completed, as between the two evaluations of a second-order step)."""
        if done > self._done:
            self.steps_run += done - self._done
            self._done = done
            if self._progress is not None:
                self._progress(done, total)
        self.check()


def steps_done(pipe, step: int) -> tuple[int, int]:
    """(steps complete, steps of the run) once model evaluation ``step`` (0-based) of a pipeline run is done.

    diffusers calls ``callback_on_step_end`` once per entry of ``scheduler.timesteps``, and that is one
    model evaluation, not one step: second-order schedulers (``scheduler.order == 2``: DPM++ SDE, Heun,
    KDPM2) evaluate twice for every step but the last, so 4 steps are 7 evaluations (and an img2img run
    drops whole steps, ``order`` evaluations each, from the front). The run's steps are
    ``ceil(evaluations / order)``; ``evaluations done × steps // evaluations`` is then exactly the steps
    complete (a step once its last evaluation is done), rises by at most one per evaluation and ends on
    the steps. ``pipe`` may be any object with ``_num_timesteps`` (a first-order count without a scheduler).
    """
    evaluations = int(getattr(pipe, "_num_timesteps", 0) or 0) or step + 1
    order = int(getattr(getattr(pipe, "scheduler", None), "order", 1) or 1)
    total = max(1, math.ceil(evaluations / max(1, order)))
    return min(total, (step + 1) * total // evaluations), total


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
