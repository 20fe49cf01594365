"""Running the next pass of a chain before its request arrives (``PassRequest.next_pass``).

A person pass's output is the next person pass's input. Between the two, the finished pass's output is
encoded, stored and announced, the gateway applies the event and publishes the next request, and a worker
fetches it: tens of milliseconds in which the device waits. When a request names the pass that follows it
(the gateway sets ``next_pass`` when that pass is certain to be queued on this output, unchanged) and no
other pass waits for this worker's device, the worker starts that pass as soon as the output is encoded,
on the output it holds in memory, under the reference the output will be stored with (same bucket, key and
sha256). When the request arrives here with exactly that spec, it is answered with this run's result:
``started`` at once, the steps still to run as its progress, ``completed`` when the run ends, the output
stored at the request's key as always; the pass metrics count the run then, not before.

Nothing depends on it. A request that differs in anything, or that goes to another worker, runs as
usual; a run ahead that fails is forgotten. It gives the device up at its next step as soon as any other
pass wants the device, when its job is cancelled and when the worker stops. At most one run ahead exists
per worker; a newer one replaces it (``multipass_diffusion_run_ahead_total{outcome}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from multipass.errors import Cancelled
from multipass.v1 import diffusion_pb2
from multipass_diffusion import metrics
from multipass_diffusion.engine import PassOutput

log = logging.getLogger(__name__)


@dataclass
class AheadRun:
    """One pass run before its request: the request it expects and the run's task."""

    #: The request as the gateway will send it (``next_pass`` with the input image filled in).
    expected: diffusion_pb2.PassRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    #: The run (set as it starts).
    task: asyncio.Task = field(init=False)
    #: What ``started`` reports once the run has its inputs (0 before: its progress tells).
    steps_total: int = 0
    #: Where the run's step progress goes once a request took it (nowhere before).
    reporter: Callable[[int, int], None] | None = None

    def progress(self, step: int, total: int) -> None:
        """The engine's progress callback (device thread): handed to the request's reporter, if any."""
        reporter = self.reporter
        if reporter is not None:
            reporter(step, total)

    def answers(self, request: diffusion_pb2.PassRequest) -> bool:
        expected = self.expected
        return (
            request.job_id == expected.job_id
            and request.tenant == expected.tenant
            and request.image_index == expected.image_index
            and request.pass_name == expected.pass_name
            and request.spec == expected.spec
        )

    async def result(self) -> PassOutput | None:
        """The run's output for the request that took it; None when it failed or was stopped (the request
        then runs as usual). Counted ``used``, ``failed`` or ``yielded``."""
        try:
            output = await asyncio.shield(self.task)
        except (asyncio.CancelledError, Cancelled):
            if self.task.done() or self.cancel.is_set():
                metrics.RUN_AHEAD.labels(outcome="yielded").inc()
                return None
            raise  # the taker itself was cancelled
        except Exception as error:  # noqa: BLE001 - the request runs as usual
            metrics.RUN_AHEAD.labels(outcome="failed").inc()
            log.info("run ahead failed; the pass runs again", extra={"error": repr(error)})
            return None
        metrics.RUN_AHEAD.labels(outcome="used").inc()
        return output


class RunAhead:
    """The worker's run ahead, if any (loop thread only)."""

    def __init__(self) -> None:
        self.current: AheadRun | None = None

    def begin(self, run: AheadRun) -> None:
        """Keep ``run`` as the run ahead; one kept before is dropped (its request did not come here)."""
        if self.current is not None:
            _drop(self.current)
        self.current = run
        run.task.add_done_callback(lambda task: self._ended(run, task))

    def _ended(self, run: AheadRun, task: asyncio.Task) -> None:
        """A run still kept that stopped (its job was cancelled) or failed is dropped and counted now; one
        that succeeded waits for its request."""
        if self.current is run and (task.cancelled() or task.exception() is not None):
            self.current = None
            metrics.RUN_AHEAD.labels(outcome=_ending(task)).inc()

    def take(self, request: diffusion_pb2.PassRequest) -> AheadRun | None:
        """The run ahead of exactly ``request``, handed over (no longer kept); None when there is none."""
        run = self.current
        if run is None or not run.answers(request):
            return None
        self.current = None
        return run

    def make_way(self) -> None:
        """Another pass wants the device: a run ahead still going stops at its next step and is dropped."""
        if self.current is not None:
            _drop(self.current)
            self.current = None

    async def close(self) -> None:
        """The worker stops: drop the run ahead and wait for it to end."""
        run, self.current = self.current, None
        if run is not None:
            _drop(run)
            with contextlib.suppress(BaseException):
                await run.task


def _drop(run: AheadRun) -> None:
    """Stop ``run`` if it still goes; count it when it ends: ``unused`` when it finished anyway,
    ``yielded`` when it stopped, ``failed`` when it failed."""
    run.cancel.set()

    run.task.add_done_callback(lambda task: metrics.RUN_AHEAD.labels(outcome=_ending(task)).inc())


def _ending(task: asyncio.Task) -> str:
    """The outcome of a run nobody took: ``yielded`` (stopped), ``failed``, or ``unused`` (it finished)."""
    if task.cancelled() or isinstance(task.exception(), Cancelled):
        return "yielded"
    return "failed" if task.exception() is not None else "unused"
