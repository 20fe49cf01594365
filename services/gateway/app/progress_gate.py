"""Step progress kept to a rate clients can see: a pass attempt's progress events that come sooner than
``interval`` seconds after the last one recorded here are acknowledged without touching the job record.

A worker reports a pass's steps every fraction of a second, and each report the gateway records costs a
compare-and-set of the job record and a job event (a report it throttles still cost a read). The job's
progress only needs a client's refresh rate: the gate drops, before any I/O, a report of a step that is not
the pass's last when this replica recorded one of that attempt (or its start) less than ``interval`` ago.
The last step, starts, completions and failures always go through, so no state depends on a dropped report.
Each replica gates what it consumes; with several replicas a pass's reports may be recorded a little more
often, never less.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from multipass.v1 import events_pb2

#: Seconds between two recorded step reports of one pass attempt (per replica).
DEFAULT_INTERVAL_SECONDS = 0.5
#: Pass attempts remembered (least recently reported forgotten first).
REMEMBERED_ATTEMPTS = 4096


class ProgressGate:
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        remembered: int = REMEMBERED_ATTEMPTS,
    ):
        self.interval = interval
        self._clock = clock
        self._remembered = remembered
        #: (tenant, job, image, pass, attempt) -> when this replica last recorded its start or a step.
        self._last: OrderedDict[tuple, float] = OrderedDict()

    def admit(self, event: events_pb2.PassEvent) -> bool:
        """Whether the event should be applied; False only for a step report that can wait."""
        if self.interval <= 0:
            return True
        kind = event.WhichOneof("event")
        key = (event.tenant, event.job_id, event.image_index, event.pass_name, event.attempt)
        if kind in ("completed", "failed"):
            self._last.pop(key, None)
            return True
        now = self._clock()
        if kind == "progress":
            progress = event.progress
            last_step = progress.steps_total > 0 and progress.step >= progress.steps_total
            last = self._last.get(key)
            if not last_step and last is not None and now - last < self.interval:
                return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._remembered:
            self._last.popitem(last=False)
        return True
