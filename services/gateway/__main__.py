"""``python -m multipass_gateway``: read settings, log JSON, serve until SIGTERM/SIGINT, stop in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from multipass.errors import ConfigError
from multipass.logs import configure_logging
from multipass_gateway.settings import GatewaySettings

log = logging.getLogger("multipass_gateway")


async def main() -> None:
    from multipass_gateway.service import serve

    settings = GatewaySettings.from_env()
    configure_logging("gateway", settings.log_level)
    handle = await serve(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping gateway")
    await handle.stop(grace=10.0)


def run() -> int:
    try:
        asyncio.run(main())
    except ConfigError as error:
        configure_logging("gateway")
        log.error("bad configuration: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
