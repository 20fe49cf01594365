"""Entry point of the ``multipass`` command: one subcommand per module, registered lazily.

Each command module exposes ``register(subparsers)``, adding its parser with ``set_defaults(run=...)``
where ``run(args) -> int`` is the exit status. Heavy imports happen inside ``run``, so ``multipass
--help`` stays fast and a missing optional dependency only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "multipass.cli.parse_cmd",
    "multipass.cli.segment_cmd",
    "multipass.cli.stack_cmd",
    "multipass.cli.jobs_cmd",
    "multipass.cli.tunes_cmd",
    "multipass.cli.admin_cmd",
    "multipass.cli.bench_cmd",
    "multipass.cli.models_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multipass", description="Multi-pass personalised image generation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
