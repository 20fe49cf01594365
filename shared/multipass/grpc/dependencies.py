"""Health that follows the dependencies: a service whose NATS connection (or object store) is down
answers NOT_SERVING until it is back.

Kubernetes reads this through the readiness probes (gRPC health): a replica that cannot reach NATS
leaves its Service's endpoints and returns when it reconnects. The liveness probes check the open port
only, so a NATS or object-store outage never restarts a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping

from multipass.grpc.server import RunningServer

log = logging.getLogger(__name__)

#: One dependency's check: True when it is reachable (sync or async; an exception counts as down).
Check = Callable[[], bool | Awaitable[bool]]

#: Seconds between two rounds of checks.
CHECK_INTERVAL_S = 2.0


async def check_once(server: RunningServer, checks: Mapping[str, Check], timeout: float) -> None:
    """Run every check and tell ``server`` which dependencies are up; log each change."""
    for name, check in checks.items():
        try:
            answer = check()
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, timeout)
            up = bool(answer)
        except Exception as error:  # noqa: BLE001 - a check that fails says the dependency is down
            up, reason = False, repr(error)
        else:
            reason = "" if up else "not connected"
        was_up = name not in server.dependencies_down
        if up != was_up:
            if up:
                log.info("dependency reachable again; serving", extra={"dependency": name})
            else:
                log.warning(
                    "dependency unreachable; not serving", extra={"dependency": name, "reason": reason}
                )
        await server.set_dependency(name, up)


async def watch_dependencies(
    server: RunningServer,
    checks: Mapping[str, Check],
    stop: asyncio.Event,
    *,
    interval: float = CHECK_INTERVAL_S,
) -> None:
    """Check every ``interval`` seconds until ``stop`` is set."""
    while not stop.is_set():
        await check_once(server, checks, timeout=interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
