"""Entry point of the ``multipass`` command: one subcommand per module, registered lazily.

Each command module exposes ``register(subparsers)``, adding its parser with ``set_defaults(run=...)``
where ``run(args) -> int`` is the exit status. The client's own commands (jobs, tunes, tenants) are listed
here; the developer and operator commands (``parse``, ``segment``, ``up``/``down``/``status``/``demo``,
``bench``, ``models``) are plugins of the ``multipass.cli`` entry-point group, present when the package
that provides them is installed. Heavy imports happen inside ``run``, so ``multipass --help`` stays fast
and a missing optional dependency only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import entry_points

from multipass_client.cli.options import UsageError

COMMAND_MODULES = (
    "multipass_client.cli.jobs_cmd",
    "multipass_client.cli.tunes_cmd",
    "multipass_client.cli.admin_cmd",
)
#: The entry-point group of the commands other packages contribute.
PLUGIN_GROUP = "multipass.cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multipass", description="Multi-pass personalised image generation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda entry: entry.name):
        try:
            register = plugin.load()
        except ModuleNotFoundError as error:
            if error.name and plugin.module.startswith(error.name):
                continue  # recorded by an install whose package is gone
            raise
        register(subparsers)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


#: Exit status of a command used wrongly (argparse's own, for a bad option).
USAGE = 2
#: Exit status when the reader of stdout went away (``multipass models check | head``), as a shell reports
#: a command ended by SIGPIPE.
BROKEN_PIPE = 128 + 13


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return USAGE
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is noticed while it can be handled
    except UsageError as error:
        print(f"multipass {args.command}: {error}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:
        # Nothing more can be shown; point stdout at /dev/null so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
