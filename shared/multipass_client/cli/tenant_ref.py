"""A tenant as the operator names it on the command line: its id (``t`` and 16 hex digits), or the name it
was created with (``multipass tenants create acme``), looked up among the tenants when it is unique."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from multipass_client.cli.options import UsageError

if TYPE_CHECKING:
    from multipass_client.admin import AdminClient

_TENANT_ID = re.compile(r"t[0-9a-f]{16}")


class TenantNotResolved(UsageError):
    """No tenant has that id or name, or more than one has that name (the command exits 2 saying so)."""


def resolve_tenant(admin: AdminClient, given: str) -> str:
    """The tenant id ``given`` names: itself when it is an id, else the id of the one tenant of that name."""
    if _TENANT_ID.fullmatch(given):
        return given
    name = given.strip()
    matches = [tenant.tenant for tenant in admin.list_tenants() if tenant.name == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TenantNotResolved(
            f"no tenant has the id or name {given!r}; `multipass tenants list` shows every tenant's id and name"
        )
    raise TenantNotResolved(f"{len(matches)} tenants are named {given!r} ({', '.join(matches)}): give its id")
