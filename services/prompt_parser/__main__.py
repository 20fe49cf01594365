"""``python -m multipass_prompt_parser``: read settings, log JSON, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from multipass.errors import ConfigError
from multipass.logs import configure_logging
from multipass_prompt_parser.settings import ParserSettings

log = logging.getLogger("multipass_prompt_parser")

#: Seconds in-flight calls get to finish on shutdown.
SHUTDOWN_GRACE = 5.0


async def run(settings: ParserSettings) -> None:
    from multipass_prompt_parser.service import serve

    handle = await serve(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await handle.stop(SHUTDOWN_GRACE)


def main() -> int:
    try:
        settings = ParserSettings.from_env()
    except ConfigError as error:
        print(f"prompt-parser: {error}", file=sys.stderr)
        return 2
    configure_logging("prompt-parser", settings.log_level)
    try:
        asyncio.run(run(settings))
    except Exception:
        log.exception("prompt parser failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
