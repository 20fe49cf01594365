"""The device's turn order: passes delivered to this worker take the device one at a time, in arrival order.

The worker takes ``1 + prefetch_depth`` passes from JetStream at once. Each fetches and decodes its inputs
(object store, tune files) right away, then waits here for its turn on the device thread, so the device
starts the next pass as soon as the current one returns, while the finished pass's output is encoded,
stored and announced beside it. A waiting pass gives its turn up when the worker stops (the worker naks it
at once, so another replica takes it) or when its job is cancelled.

:class:`DeviceQueue` also measures the device's idle gaps: the time between the device finishing a pass
(or a pass being delivered, when the device was idle with nothing held) and the next pass starting, while
at least one delivered pass was held (``multipass_diffusion_device_idle_seconds``), and the device's busy
time (``multipass_diffusion_device_busy_seconds_total``). A gap that ends because every held pass left
without running (failed fetch, cancel, stop) is not a device gap and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from multipass_diffusion import metrics

T = TypeVar("T")


class DeviceQueue:
    def __init__(self, executor: Executor, *, clock: Callable[[], float] = time.monotonic):
        self._executor = executor
        self._clock = clock
        self._turn = asyncio.Lock()
        self._poke = asyncio.Event()
        self._mutex = threading.Lock()  # the accounting below is touched by the loop and the device thread
        self._held = 0
        self._busy = False
        self._queued_since: float | None = None
        #: (idle gap before, busy seconds) of every pass run, for tests and the bench.
        self.history: list[tuple[float | None, float]] = []
        self._running = asyncio.Event()  # set on the loop while a pass runs on the device

    # -- holding -----------------------------------------------------------------------------------

    def hold(self) -> None:
        """A pass was delivered to this worker (it will run, or :meth:`release` it)."""
        with self._mutex:
            self._held += 1
            if not self._busy and self._queued_since is None:
                self._queued_since = self._clock()

    def release(self) -> None:
        """A held pass leaves without running (failed before its turn, cancelled, handed back)."""
        with self._mutex:
            self._held -= 1
            if self._held == 0 and not self._busy:
                self._queued_since = None

    @property
    def held(self) -> int:
        return self._held

    # -- turns -------------------------------------------------------------------------------------

    def poke(self) -> None:
        """Wake every waiting pass to look at its stop and cancel flags again."""
        self._poke.set()
        self._poke = asyncio.Event()

    async def wait_turn(self, stop: asyncio.Event, cancel: threading.Event) -> bool:
        """Wait for the device; True when this pass has it (then :meth:`end_turn` must follow), False when
        ``stop`` or ``cancel`` came first."""
        acquire = asyncio.ensure_future(self._turn.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not (acquire.done() or stop.is_set() or cancel.is_set()):
                poked = asyncio.ensure_future(self._poke.wait())
                try:
                    await asyncio.wait({acquire, stopping, poked}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    poked.cancel()
            if acquire.done() and not (stop.is_set() or cancel.is_set()):
                return True
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                if await acquire:
                    self._turn.release()
            return False
        finally:
            stopping.cancel()

    def end_turn(self) -> None:
        self._turn.release()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the device thread (the caller has the turn), accounting idle and busy time."""
        self._running.set()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._on_device, fn)
        finally:
            self._running.clear()

    async def until_busy(self) -> None:
        """Return once a pass runs on the device (at once if one does).

        The worker's prefetch gate: it takes its next pass only while the device is busy, so passes
        published together (a stage of parallel persons) spread over idle replicas instead of queueing
        behind one replica's current pass.
        """
        await self._running.wait()

    def _on_device(self, fn: Callable[[], T]) -> T:
        started = self._clock()
        with self._mutex:
            self._held -= 1
            self._busy = True
            gap = started - self._queued_since if self._queued_since is not None else None
            self._queued_since = None
        if gap is not None:
            metrics.DEVICE_IDLE.observe(gap)
        try:
            return fn()
        finally:
            ended = self._clock()
            busy = ended - started
            metrics.DEVICE_BUSY.inc(busy)
            with self._mutex:
                self._busy = False
                self._queued_since = ended if self._held > 0 else None
                self.history.append((gap, busy))
