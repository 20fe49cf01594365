"""``python -m multipass_segmentation``: read settings, log JSON, load models, serve until SIGTERM/SIGINT.

Settings and logging come first, the heavy imports (torch, segment-anything, transformers) after, so an
import or model-loading failure is logged as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from multipass.errors import ConfigError, MultipassError
from multipass.logs import configure_logging
from multipass_segmentation.settings import SegmentationSettings

log = logging.getLogger("multipass_segmentation")

#: Seconds in-flight calls get to finish on shutdown.
SHUTDOWN_GRACE = 10.0


async def run(settings: SegmentationSettings) -> None:
    from multipass_segmentation.service import serve

    service = await serve(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await service.stop(SHUTDOWN_GRACE)


def main() -> int:
    try:
        settings = SegmentationSettings.from_env()
    except ConfigError as error:
        print(f"segmentation: {error}", file=sys.stderr)
        return 2
    configure_logging("segmentation", settings.log_level)
    try:
        asyncio.run(run(settings))
    except MultipassError as error:
        log.error("segmentation service cannot start: %s", error)
        return 3
    except Exception:
        log.exception("segmentation service failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
