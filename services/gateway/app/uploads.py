"""Uploaded images: when each expires, deleting one on request, and deleting the expired ones.

An upload (``uploads/<tenant>/<image_id>.png``) is an input waiting for a job or a tune, usually a photo of
a person. It is kept for the operator's ``upload_ttl_seconds`` (0: until deleted) and removed earlier by
``DeleteUpload``. Jobs and tunes copy what they use (a job its inputs, a tune its reference faces), so
neither depends on the upload afterwards. Every replica sweeps: deleting is idempotent, and one listing
of ``uploads/`` every ``upload_sweep_seconds`` costs little.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from multipass import names
from multipass.errors import (
    InvalidInput,
    NotFound,
    Reason,
    ResourceExhausted,
    Violation,
    echo,
)
from multipass.store import ObjectStore
from multipass_gateway.domain.tune_checks import valid_upload_id
from multipass_gateway.infra import metrics, periodic
from multipass_gateway.infra.tenant_limits import TenantLimitsCache
from multipass_gateway.infra.tune_store import unknown_upload
from multipass_gateway.infra.upload_limits import UploadSlots

log = logging.getLogger(__name__)

UPLOADS_PREFIX = "uploads/"


class Uploads:
    def __init__(
        self,
        objects: ObjectStore,
        *,
        ttl_seconds: float,
        sweep_seconds: float,
        tenant_max_uploads: int = 500,
        limits: TenantLimitsCache | None = None,
        max_receiving: int = 8,
        retry_after_seconds: float = 1.0,
    ):
        """``limits``: tenants' own quotas (a tenant's ``max_uploads`` replaces ``tenant_max_uploads``).
        ``max_receiving``: images this replica receives at once (each held in memory until decoded)."""
        self.objects = objects
        self.limits = limits
        self.ttl = timedelta(seconds=ttl_seconds) if ttl_seconds > 0 else None
        self.sweep_seconds = sweep_seconds
        self.tenant_max_uploads = tenant_max_uploads
        self.slots = UploadSlots(
            max_receiving,
            retry_after_seconds=retry_after_seconds,
            what="image uploads",
            scope="image_uploads",
            setting="MULTIPASS_GATEWAY_MAX_IMAGE_UPLOADS",
        )

    def expires_at(self, uploaded: datetime) -> datetime | None:
        return uploaded + self.ttl if self.ttl is not None else None

    async def check_room(self, tenant: str) -> None:
        """RESOURCE_EXHAUSTED (QUOTA_EXCEEDED, ``scope=uploads``) when the tenant holds its most uploads;
        the retry hint is when the oldest one expires. Concurrent uploads may pass the check together, so
        the bound holds to within the uploads in flight at that moment."""
        own = (await self.limits.get(tenant)).max_uploads if self.limits is not None else 0
        most = own or self.tenant_max_uploads
        held = await self.objects.list_modified(names.BUCKET_JOBS, f"{UPLOADS_PREFIX}{tenant}/")
        if len(held) < most:
            return
        now = datetime.now(UTC)
        oldest = min(modified for _, modified in held)
        expiry = self.expires_at(oldest)
        retry = max(1.0, (expiry - now).total_seconds()) if expiry is not None else 60.0
        when = f"the oldest expires in {retry:.0f} s" if expiry is not None else "uploads do not expire here"
        raise ResourceExhausted(
            f"this tenant holds {len(held)} uploads, the most it may ({most}): delete some "
            f"with DeleteUpload ({when})",
            retry_after_seconds=retry,
            reason=Reason.QUOTA_EXCEEDED,
            metadata={"scope": "uploads", "limit": str(most)},
        )

    async def delete(self, tenant: str, image_id: str) -> None:
        """Delete the tenant's upload now; NOT_FOUND (``image_id``) when the tenant has none by that id."""
        if not image_id:
            raise InvalidInput.of([Violation("image_id", "is required")])
        if not valid_upload_id(image_id):
            raise InvalidInput.of(
                [Violation("image_id", f"got {echo(image_id)}; expected an image_id returned by UploadImage")]
            )
        key = names.upload_key(tenant, image_id)
        try:
            await self.objects.stat(names.BUCKET_JOBS, key)
        except NotFound as error:
            raise unknown_upload("image_id", image_id) from error
        await self.objects.delete(names.BUCKET_JOBS, key)
        metrics.UPLOADS_DELETED.labels(cause="deleted").inc()
        log.info("upload deleted", extra={"tenant": tenant, "image_id": image_id})

    async def expire_once(self, now: datetime | None = None) -> int:
        """Delete every upload (of any tenant) older than the TTL; returns how many."""
        if self.ttl is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - self.ttl
        expired = [
            key
            for key, modified in await self.objects.list_modified(names.BUCKET_JOBS, UPLOADS_PREFIX)
            if modified <= cutoff
        ]
        await self.objects.delete_keys(names.BUCKET_JOBS, expired)
        if expired:
            metrics.UPLOADS_DELETED.labels(cause="expired").inc(len(expired))
            log.info("expired uploads deleted", extra={"count": len(expired)})
        return len(expired)

    async def run(self, stop: asyncio.Event) -> None:
        await periodic.every(self.sweep_seconds, stop, self.expire_once, what="upload expiry")
