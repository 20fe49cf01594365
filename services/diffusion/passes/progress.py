"""Step reporting for passes made of several parts (tiles, faces): one progress bar over all parts.

A part runs a diffusers pipeline (or a model call) with :class:`PartMonitor` in place of the pass's
:class:`~multipass_diffusion.passes.context.StepMonitor`; its steps are mapped onto the pass's monitor
as ``index * steps + step`` of ``count * steps``, so progress rises monotonically across the parts and a
cancelled pass stops between two steps of any part.
"""

from __future__ import annotations

from multipass_diffusion.passes.context import StepMonitor


class StepCount:
    """Stands in for the pipeline in :meth:`StepMonitor.callback`, which reads ``_num_timesteps``."""

    def __init__(self, total: int):
        self._num_timesteps = total


class PartMonitor:
    def __init__(self, monitor: StepMonitor, index: int, count: int):
        self.monitor = monitor
        self.index = index
        self.count = count

    @property
    def steps_run(self) -> int:
        return self.monitor.steps_run

    def check(self) -> None:
        self.monitor.check()

    def callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        total = int(getattr(pipe, "_num_timesteps", 0) or 0) or step + 1
        self.monitor.callback(StepCount(total * self.count), self.index * total + step, timestep, {})
        return tensors


def part_done(monitor: StepMonitor, index: int, count: int) -> None:
    """Report a model call that has no inner steps (one tile of an upscaler, one face) as one step."""
    monitor.callback(StepCount(count), index, None, {})
