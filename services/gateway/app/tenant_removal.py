"""Removing a tenant (``Admin.DeleteTenant``): its keys, jobs, tunes and uploads go, then the tenant itself.

The tenant is marked as being removed (it takes no new keys) and its keys are revoked first, so nothing
new starts with them: at once on this replica, on the others when
the revocation note arrives or, at worst, when their authentication cache expires
(``MULTIPASS_GATEWAY_AUTH_CACHE_SECONDS``). Every job is then deleted through ``DeleteJob``'s path (a
running one is cancelled first), every tune with its files, every upload. Once the cache time since the
revocation has passed, the jobs and tunes are listed again, so one that another replica accepted just
before it forgot the keys goes too; a job submitted meanwhile is checked against its key again once its
record is stored (and discarded when the key is gone), and uploads and tune files still being received
check their key again before they store anything. The keys are revoked once more just before the tenant's record goes, last: a removal that fails half-way leaves
the tenant in place (without keys), and is repeated by calling again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from multipass import names
from multipass.errors import NotFound
from multipass.store import ObjectStore
from multipass_gateway.app.default_layouts import DefaultLayouts
from multipass_gateway.app.deletion import JobDeleter
from multipass_gateway.app.tenant_usage import TenantUsage
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.infra.tune_store import TuneStore

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Removed:
    keys_revoked: int = 0
    jobs_deleted: int = 0
    tunes_deleted: int = 0
    objects_deleted: int = 0


class TenantRemoval:
    def __init__(
        self,
        *,
        tenants: TenantStore,
        jobs: JobStore,
        deleter: JobDeleter,
        tunes: TuneStore,
        objects: ObjectStore,
        auth_cache_seconds: float,
        usage: TenantUsage,
        layouts: DefaultLayouts | None = None,
        clock=time.monotonic,
    ):
        self.tenants = tenants
        self.jobs = jobs
        self.deleter = deleter
        self.tunes = tunes
        self.objects = objects
        self.auth_cache_seconds = auth_cache_seconds
        self.usage = usage
        self.layouts = layouts
        self._clock = clock

    async def remove(self, tenant: str) -> Removed:
        """Remove ``tenant`` and everything it owns; NotFound when there is no such tenant."""
        await self.tenants.require(tenant)
        await self.tenants.mark_removing(tenant)  # no new keys from now on
        removed = Removed(keys_revoked=await self.tenants.revoke_all(tenant))
        revoked_at = self._clock()
        await self._delete_owned(tenant, removed)
        wait = self.auth_cache_seconds - (self._clock() - revoked_at)
        if wait > 0:
            await asyncio.sleep(wait)
        await self._delete_owned(tenant, removed)  # what another replica accepted before it forgot the keys
        for bucket, prefix in (
            (names.BUCKET_JOBS, f"uploads/{tenant}/"),
            (names.BUCKET_JOBS, f"jobs/{tenant}/"),
            (names.BUCKET_TUNES, f"tunes/{tenant}/"),
        ):
            removed.objects_deleted += await self.objects.delete_prefix(bucket, prefix)
        # A key created while the removal began (before it was marked) is revoked too: none outlives it.
        removed.keys_revoked += await self.tenants.revoke_all(tenant)
        await self.tenants.delete_record(tenant)
        self.tenants.limits.forget(tenant)
        self.usage.forget(tenant)
        if self.layouts is not None:
            self.layouts.forget(tenant)
        log.info("tenant removed", extra={"tenant": tenant, **removed.__dict__})
        return removed

    async def _delete_owned(self, tenant: str, removed: Removed) -> None:
        jobs = await _each(
            await self.jobs.job_ids(tenant), lambda job_id: self.deleter.delete(tenant, job_id)
        )
        removed.jobs_deleted += len(jobs)
        removed.objects_deleted += sum(response.objects_deleted for response in jobs)
        tunes = await _each(await self.tunes.ids(tenant), lambda tune_id: self.tunes.delete(tenant, tune_id))
        removed.tunes_deleted += len(tunes)
        removed.objects_deleted += sum(tunes)


#: Jobs (or tunes) of a removed tenant deleted at once: a tenant with thousands of jobs takes seconds, not
#: minutes, and the stores see a bounded burst.
CONCURRENT_DELETES = 16


async def _each(ids: list[str], delete: Callable[[str], Awaitable[T]]) -> list[T]:
    """``delete(id)`` for every id, :data:`CONCURRENT_DELETES` at a time; the results of those that were
    there (NotFound: deleted meanwhile by its owner, retention or another removal). Every delete runs to its
    end before the first other error is raised, so none is left running after the call."""
    semaphore = asyncio.Semaphore(CONCURRENT_DELETES)

    async def one(item: str):
        async with semaphore:
            return await delete(item)

    results = await asyncio.gather(*(one(item) for item in ids), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException) and not isinstance(r, NotFound)), None)
    if failure is not None:
        raise failure
    return [r for r in results if not isinstance(r, BaseException)]
