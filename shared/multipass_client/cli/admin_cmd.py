"""``multipass tenants create | list | keys | add-key | limits | revoke | delete``: operator commands."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from multipass_client.cli.options import add_connection_args, client_from_args, reports_rpc_errors
from multipass_client.cli.tenant_ref import resolve_tenant

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp


#: Every command that takes a tenant takes its id or its name.
_TENANT_HELP = "the tenant's id (t and 16 hex digits) or its name, when no other tenant has that name"


def register(subparsers: argparse._SubParsersAction) -> None:
    tenants = subparsers.add_parser(
        "tenants", help="create and list tenants, issue and revoke API keys (admin)"
    )
    actions = tenants.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a tenant; prints its API key (shown once)")
    create.add_argument("name")
    add_connection_args(create, admin=True)
    create.set_defaults(run=run_create)

    listing = actions.add_parser("list", help="every tenant, oldest first, with its number of live keys")
    listing.add_argument("--json", action="store_true", help="one JSON array of TenantSummary objects")
    add_connection_args(listing, admin=True)
    listing.set_defaults(run=run_list)

    keys = actions.add_parser("keys", help="a tenant's API keys: ids, issue and revocation times")
    keys.add_argument("tenant", help=_TENANT_HELP)
    keys.add_argument("--json", action="store_true", help="one JSON array of ApiKeySummary objects")
    add_connection_args(keys, admin=True)
    keys.set_defaults(run=run_keys)

    add_key = actions.add_parser("add-key", help="issue another API key for a tenant (shown once)")
    add_key.add_argument("tenant", help=_TENANT_HELP)
    add_connection_args(add_key, admin=True)
    add_key.set_defaults(run=run_add_key)

    limits = actions.add_parser("limits", help="set a tenant's own quotas (0 = the gateway's setting)")
    limits.add_argument("tenant", help=_TENANT_HELP)
    limits.add_argument("--max-pending-passes", type=int, help="planned passes of unfinished jobs")
    limits.add_argument("--max-uploads", type=int, help="uploads held at once")
    limits.add_argument(
        "--max-passes-in-flight", type=int, help="passes released to the workers at once (the rest wait)"
    )
    add_connection_args(limits, admin=True)
    limits.set_defaults(run=run_limits)

    revoke = actions.add_parser("revoke", help="revoke an API key at once")
    revoke.add_argument("key_id")
    add_connection_args(revoke, admin=True)
    revoke.set_defaults(run=run_revoke)

    delete = actions.add_parser(
        "delete", help="remove a tenant with its keys, jobs, images, tunes and uploads (cannot be undone)"
    )
    delete.add_argument("tenant", help=_TENANT_HELP)
    delete.add_argument("--yes", action="store_true", help="confirm: without it nothing is removed")
    add_connection_args(delete, admin=True)
    delete.set_defaults(run=run_delete)


@reports_rpc_errors
def run_create(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        return _show_issued(client.admin.create_tenant(args.name))


def _show_issued(issued) -> int:
    """Print a new key (stdout, alone, for scripts) and what it belongs to (stderr)."""
    print(f"tenant {issued.tenant}, key id {issued.key_id}; the API key below is shown once", file=sys.stderr)
    print(issued.api_key)
    return 0


@reports_rpc_errors
def run_list(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        tenants = list(client.admin.list_tenants())
    if args.json:
        return _print_json(tenants)
    if not tenants:
        print("no tenants")
    for tenant in tenants:
        print(
            f"{tenant.tenant}  {_when(tenant.created_at)}  {tenant.live_keys} live key(s)"
            f"{_limits_text(tenant.limits)}  {tenant.name}"
        )
    return 0


@reports_rpc_errors
def run_limits(args: argparse.Namespace) -> int:
    """Set the limits given; the others keep their current values."""
    with client_from_args(args, admin=True) as client:
        tenant = resolve_tenant(client.admin, args.tenant)
        current = next((t.limits for t in client.admin.list_tenants() if t.tenant == tenant), None)
        given = {name: getattr(args, name) for name in _LIMITS}
        summary = client.admin.set_tenant_limits(
            tenant,
            **{
                name: value if value is not None else (getattr(current, name) if current else 0)
                for name, value in given.items()
            },
        )
    print(f"{summary.tenant}:{_limits_text(summary.limits) or '  the gateway settings'}")
    return 0


#: The tenant limits, by field, as the listing names them.
_LIMITS = {
    "max_pending_passes": "max pending passes",
    "max_uploads": "max uploads",
    "max_passes_in_flight": "max passes in flight",
}


def _limits_text(limits) -> str:
    own = [f"{label} {getattr(limits, name)}" for name, label in _LIMITS.items() if getattr(limits, name)]
    return f"  ({', '.join(own)})" if own else ""


@reports_rpc_errors
def run_keys(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        keys = client.admin.list_keys(resolve_tenant(client.admin, args.tenant))
    if args.json:
        return _print_json(keys)
    if not keys:
        print("no keys")
    for key in keys:
        state = f"revoked {_when(key.revoked_at)}" if key.revoked else "live"
        print(f"{key.key_id}  issued {_when(key.created_at)}  {state}")
    return 0


@reports_rpc_errors
def run_add_key(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        return _show_issued(client.admin.create_key(resolve_tenant(client.admin, args.tenant)))


def _print_json(messages) -> int:
    import json

    from google.protobuf import json_format

    print(
        json.dumps(
            [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2
        )
    )
    return 0


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "(time not recorded)"
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@reports_rpc_errors
def run_revoke(args: argparse.Namespace) -> int:
    with client_from_args(args, admin=True) as client:
        response = client.admin.revoke_key(args.key_id)
    print(f"{args.key_id}: {'revoked' if response.revoked else 'not revoked (unknown or already revoked)'}")
    return 0 if response.revoked else 1


@reports_rpc_errors
def run_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"this removes tenant {args.tenant} and everything it owns for good; add --yes to go on",
            file=sys.stderr,
        )
        return 2
    with client_from_args(args, admin=True) as client:
        tenant = resolve_tenant(client.admin, args.tenant)
        removed = client.admin.delete_tenant(tenant)
    print(
        f"{tenant}: removed ({removed.keys_revoked} key(s) revoked, {removed.jobs_deleted} job(s), "
        f"{removed.tunes_deleted} tune(s), {removed.objects_deleted} stored object(s))"
    )
    return 0
