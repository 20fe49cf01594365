"""The event loop a service process runs on (``MULTIPASS_EVENT_LOOP``).

``auto`` (the default) runs on uvloop where it is installed (every service image installs it) and on
asyncio's own loop elsewhere; ``uvloop`` insists on it; ``asyncio`` keeps the standard loop. The choice
changes how fast the loop's own machinery runs (callbacks, futures, timers, socket reads and writes,
about a fifth of the gateway's CPU), never what a service does: docs/BENCHMARKS.md measures it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from multipass.errors import ConfigError

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "auto"

T = TypeVar("T")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` runs on: ``uvloop`` or ``asyncio``; ConfigError when uvloop is demanded and absent."""
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"MULTIPASS_EVENT_LOOP: got {choice!r}; allowed: {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return "asyncio"
    if uvloop_installed():
        return "uvloop"
    if choice == "uvloop":
        raise ConfigError("MULTIPASS_EVENT_LOOP: uvloop is not installed (pip install uvloop, or set auto)")
    return "asyncio"


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new-loop factory for :class:`asyncio.Runner`; None for asyncio's default loop."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
