"""``multipass tenants create | revoke``: operator commands, authenticated with the admin token."""

from __future__ import annotations

import argparse
import sys

from multipass_client.cli.options import add_connection_args, client_from_args, reports_rpc_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    tenants = subparsers.add_parser("tenants", help="create tenants and revoke API keys (admin)")
    actions = tenants.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a tenant; prints its API key (shown once)")
    create.add_argument("name")
    add_connection_args(create, admin=True)
    create.set_defaults(run=run_create)

    revoke = actions.add_parser("revoke", help="revoke an API key at once")
    revoke.add_argument("key_id")
    add_connection_args(revoke, admin=True)
    revoke.set_defaults(run=run_revoke)


@reports_rpc_errors
def run_create(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        created = client.admin.create_tenant(args.name)
    print(
        f"tenant {created.tenant}, key id {created.key_id}; the API key below is shown once", file=sys.stderr
    )
    print(created.api_key)
    return 0


@reports_rpc_errors
def run_revoke(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        response = client.admin.revoke_key(args.key_id)
    print(f"{args.key_id}: {'revoked' if response.revoked else 'not revoked (unknown or already revoked)'}")
    return 0 if response.revoked else 1
