"""Background work repeated every few seconds until the gateway stops, surviving its own failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from multipass.errors import MultipassError

log = logging.getLogger(__name__)


async def every(
    interval: float, stop: asyncio.Event, action: Callable[[], Awaitable[object]], *, what: str
) -> None:
    """Run ``action`` now and then every ``interval`` seconds until ``stop`` is set. A failure is logged
    (``what`` names the work: a service error as a warning, anything else with its traceback) and the next
    round comes as planned."""
    while not stop.is_set():
        try:
            await action()
        except MultipassError as error:
            log.warning("%s failed", what, extra={"error": str(error)})
        except Exception:
            log.exception("%s failed", what)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
