"""``multipass parse``: parse a prompt document and show the passes it asks for.

In-process by default (limits from the ``MULTIPASS_*`` settings of the prompt parser), or through a
running prompt-parser service with ``--addr`` (sending ``MULTIPASS_INTERNAL_TOKEN`` when it is set).
Invalid input exits with status 2 and prints one line per field violation on stderr. The work is in
:mod:`multipass_dev.cli.prompt_parsing`, imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

#: Exit status of an invalid prompt (as argparse's usage errors).
EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parse",
        help="parse a prompt document and show its passes",
        description="Parse a prompt document (text, BREAK segments, <lora:...> tags, --flags, name=value block).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("text", nargs="?", help="the prompt document")
    source.add_argument(
        "-f", "--file", metavar="FILE", help="read the prompt document from FILE ('-' for stdin)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter overriding the document's block (repeatable)",
    )
    parser.add_argument(
        "--input-image",
        action="store_true",
        help="parse as if an input image were uploaded with the request",
    )
    parser.add_argument("--json", action="store_true", help="print the ParsedPrompt message as proto3 JSON")
    parser.add_argument("--addr", metavar="HOST:PORT", help="ask a running prompt-parser service instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    text = _read_document(args)
    if text is None:
        return EXIT_INVALID
    params: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            print(f"multipass parse: --param {item!r}: expected NAME=VALUE", file=sys.stderr)
            return EXIT_INVALID
        params[name.strip()] = value
    from multipass_dev.cli import prompt_parsing

    if args.addr:
        return prompt_parsing.parse_remote(args, text, params)
    return prompt_parsing.parse_local(args, text, params)


def _read_document(args: argparse.Namespace) -> str | None:
    if args.file is None and args.text is None:
        print("multipass parse: give the prompt as TEXT or with -f FILE", file=sys.stderr)
        return None
    if args.file is None:
        return args.text
    if args.file == "-":
        return sys.stdin.read()
    try:
        with open(args.file, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        print(f"multipass parse: cannot read {args.file}: {error}", file=sys.stderr)
        return None
