"""Command-line plumbing shared by the client commands: where the gateway is, which credentials to send,
and turning gRPC failures into a readable message and a non-zero exit status."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from multipass_client.stack_record import StackPaths, admin_token, dev_api_key, gateway_address, read_state

if TYPE_CHECKING:
    from multipass_client.channel import Client

# Kept free of grpc and protobuf imports: ``multipass --help`` imports every command module.

API_KEY_ENV = "MULTIPASS_API_KEY"
ADMIN_TOKEN_ENV = "MULTIPASS_ADMIN_TOKEN"
#: Exit status of a command whose rpc failed.
RPC_FAILED = 1


class UsageError(Exception):
    """The command was given something it cannot work with (a missing file, options that exclude each
    other, no credentials): ``multipass`` prints the message and exits 2, as for a bad option."""


def add_connection_args(parser: argparse.ArgumentParser, *, admin: bool = False) -> None:
    parser.add_argument("--addr", help="gateway host:port (default: the local stack's, else 127.0.0.1:50050)")
    if admin:
        parser.add_argument(
            "--admin-token", help=f"operator token (default: ${ADMIN_TOKEN_ENV}, else the local stack's)"
        )
    else:
        parser.add_argument(
            "--api-key", help=f"API key (default: ${API_KEY_ENV}, else the local stack's dev tenant)"
        )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")


def resolve_address(args: argparse.Namespace, paths: StackPaths | None = None) -> str:
    return args.addr or gateway_address(paths)


def local_stack_state(args: argparse.Namespace, paths: StackPaths | None = None) -> dict | None:
    """The local stack's record when the command talks to its gateway (object-store access for downloads)."""
    state = read_state(paths or StackPaths.current())
    if state is None or (args.addr and args.addr != state.get("gateway_address")):
        return None
    return state


def resolve_api_key(args: argparse.Namespace, paths: StackPaths | None = None) -> str | None:
    return getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or dev_api_key(paths)


def resolve_admin_token(args: argparse.Namespace, paths: StackPaths | None = None) -> str | None:
    return getattr(args, "admin_token", None) or os.environ.get(ADMIN_TOKEN_ENV) or admin_token(paths)


def client_from_args(args: argparse.Namespace, *, admin: bool = False) -> Client:
    from multipass_client.channel import connect

    address = resolve_address(args)
    if admin:
        token = resolve_admin_token(args)
        if not token:
            raise UsageError(
                f"no admin token: pass --admin-token, set {ADMIN_TOKEN_ENV}, or start the local stack (`multipass up`)"
            )
        return connect(address, admin_token=token, timeout=args.timeout)
    key = resolve_api_key(args)
    if not key:
        raise UsageError(
            f"no API key: pass --api-key, set {API_KEY_ENV}, or start the local stack (`multipass up`)"
        )
    return connect(address, api_key=key, timeout=args.timeout)


#: Said after a submit names a tune the tenant does not have (the examples' ids are placeholders).
UNKNOWN_TUNE_HINT = (
    "(`multipass tunes list` shows your tunes; `multipass tunes register` adds one. The examples' tune ids "
    "are placeholders: `multipass demo --prompt-file FILE` runs a prompt file with sample tunes in their place)"
)


def reports_rpc_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print ``CODE: message`` plus field violations on stderr and exit non-zero when an rpc fails."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        import grpc

        from multipass_client.errors import describe_rpc_error, error_reason

        try:
            return run(args)
        except grpc.RpcError as error:
            print(describe_rpc_error(error), file=sys.stderr)
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                print(
                    f"(is the gateway running at {resolve_address(args)}? `multipass status` shows the local stack)",
                    file=sys.stderr,
                )
            elif error_reason(error)[0] == "UNKNOWN_TUNE" and args.command == "submit":
                print(UNKNOWN_TUNE_HINT, file=sys.stderr)
            return RPC_FAILED

    return wrapper


def parse_key_values(pairs: list[str] | None, option: str = "--param") -> dict[str, str]:
    """``["steps=4", "w=256"]`` → ``{"steps": "4", "w": "256"}``; a pair without ``=`` is an error."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{option} {pair!r}: expected NAME=VALUE")
        result[name.strip()] = value
    return result
