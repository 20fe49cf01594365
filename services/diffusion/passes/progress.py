"""Step reporting for passes made of several parts (tiles, faces): one progress bar over all parts.

A part runs a diffusers pipeline (or a model call) with :class:`PartMonitor` in place of the pass's
:class:`~multipass_diffusion.passes.context.StepMonitor`; its steps (not its model evaluations:
:func:`~multipass_diffusion.passes.context.steps_done`) are mapped onto the pass's monitor as
``index * steps + step`` of ``count * steps``, so progress rises monotonically across the parts and a
cancelled pass stops between two evaluations of any part.
"""

from __future__ import annotations

from multipass_diffusion.passes.context import StepMonitor, steps_done


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
        done, total = steps_done(pipe, step)
        if step == 0:
            self.monitor.begin(self.index * total)
        self.monitor.advance(self.index * total + done, self.count * total)
        return tensors


def part_done(monitor: StepMonitor, index: int, count: int) -> None:
    """Report a model call that has no inner steps (one tile of an upscaler, one face) as one step."""
    monitor.begin(index)
    monitor.advance(index + 1, count)
