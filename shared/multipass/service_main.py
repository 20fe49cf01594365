"""The one entry-point routine of every service's ``python -m`` command.

Settings first (a bad variable exits 2 naming it), then JSON logging, then the heavy imports inside
``serve`` (so an import or model-loading failure is logged), then serve until SIGTERM/SIGINT and stop
in order with a grace period. Exit codes: 0 stopped cleanly, 2 bad configuration, 3 could not start
(a missing model, an unreachable dependency), 1 anything unexpected.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from multipass import event_loop
from multipass.errors import ConfigError, MultipassError
from multipass.logs import configure_logging

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_CANNOT_START = 0, 1, 2, 3


class ServiceHandle(Protocol):
    async def stop(self, grace: float) -> None: ...


class HasLogLevel(Protocol):
    log_level: str
    #: ``MULTIPASS_EVENT_LOOP`` (:mod:`multipass.event_loop`).
    event_loop: str


SettingsT = TypeVar("SettingsT", bound=HasLogLevel)


async def serve_until_signalled(
    serve: Callable[[Any], Awaitable[ServiceHandle]], settings: Any, grace: float
) -> None:
    """Start the service, wait for SIGTERM or SIGINT, then stop it with ``grace`` seconds for in-flight work."""
    handle = await serve(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    logging.getLogger("multipass.service").info("signal received; shutting down")
    await handle.stop(grace)


def run_service(
    name: str,
    load_settings: Callable[[], SettingsT],
    serve: Callable[[SettingsT], Awaitable[ServiceHandle]],
    *,
    grace: float = 10.0,
) -> int:
    """Run one service process to completion and return its exit status."""
    log = logging.getLogger(f"multipass.{name}")
    try:
        settings = load_settings()
    except ConfigError as error:
        configure_logging(name)
        log.error("%s", error)
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(name, settings.log_level)
    try:
        loop = event_loop.resolve(settings.event_loop)
        log.debug("event loop: %s", loop, extra={"event_loop": loop})
        event_loop.run(serve_until_signalled(serve, settings, grace), settings.event_loop)
    except ConfigError as error:
        log.error("%s", error)
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except MultipassError as error:
        log.error("%s cannot start: %s", name, error)
        print(f"{name}: cannot start: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    except Exception:
        log.exception("%s failed", name)
        return EXIT_UNEXPECTED
    return EXIT_OK
