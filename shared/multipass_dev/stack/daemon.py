"""The detached supervisor of ``multipass up --detach``: ``python -m multipass_dev.stack.daemon --root DIR``.

Started in its own session by ``multipass up --detach``; reads its settings from the inherited
``MULTIPASS_*`` environment, logs JSON lines to ``DIR/logs/supervisor.log``, records progress in
``DIR/stack.json`` and stops every process in order on SIGTERM (``multipass down``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from multipass.logs import configure_logging
from multipass_client.stack_record import StackPaths
from multipass_dev.stack.control import run_in_foreground
from multipass_dev.stack.local_stack import StackConfig

log = logging.getLogger("multipass_dev.stack.daemon")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multipass_dev.stack.daemon")
    parser.add_argument("--root", required=True, type=Path, help="the stack directory (.multipass)")
    args = parser.parse_args(argv)
    configure_logging("supervisor")
    paths = StackPaths(args.root.absolute())
    config = StackConfig.from_env(paths)
    return run_in_foreground(config, on_progress=lambda message: log.info("%s", message))


if __name__ == "__main__":
    sys.exit(main())
