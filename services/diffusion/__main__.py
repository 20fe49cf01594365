"""``python -m multipass_diffusion``: read settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from multipass.errors import MultipassError
from multipass.logs import configure_logging


async def _main() -> None:
    from multipass_diffusion.service import serve
    from multipass_diffusion.settings import DiffusionSettings

    settings = DiffusionSettings.from_env()
    configure_logging("diffusion", settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = await serve(settings)
    await stop.wait()
    logging.getLogger(__name__).info("signal received; shutting down")
    await service.stop(grace=10.0)


def main() -> None:
    configure_logging("diffusion")
    try:
        asyncio.run(_main())
    except MultipassError as error:
        logging.getLogger("multipass_diffusion").error("cannot start: %s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
