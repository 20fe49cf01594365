"""The public ``multipass.v1.Jobs`` servicer: authenticate, convert, delegate. Errors are raised."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from multipass import names
from multipass.bus import Bus
from multipass.callback_signing import tenant_key
from multipass.errors import FailedPrecondition, InvalidInput, MultipassError, Reason, Violation
from multipass.images import decode_image
from multipass.store import ObjectStore
from multipass.v1 import jobs_pb2, jobs_pb2_grpc
from multipass_gateway.api.auth import authenticate, authenticate_key
from multipass_gateway.api.client_streams import ClientStream, drained_on_refusal
from multipass_gateway.api.views import public_job
from multipass_gateway.app import watch_job
from multipass_gateway.app.cancellation import Canceller
from multipass_gateway.app.deletion import JobDeleter
from multipass_gateway.app.submission import Submitter, job_id_time
from multipass_gateway.app.uploads import Uploads
from multipass_gateway.domain import job_state, request_checks
from multipass_gateway.domain.page_tokens import page_token, parse_page_token
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.tenant_store import TenantStore
from multipass_gateway.infra.upload_limits import paced
from multipass_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SERVICE_NAME = "multipass.v1.Jobs"


def checked_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidInput.of([Violation("job_id", "is required")])
    return names.check_token(job_id, "job_id")


#: Job records a filtered ListJobs reads at once while it fills a page.
LIST_READ_WINDOW = 32
#: Serialized bytes of one ListJobs answer: what gRPC clients receive unless told otherwise (4 MiB), less
#: room for the token and framing. A page ends before the job that would not fit (a job of eight images
#: with eight persons is near 100 KB); a single job larger than this still makes a page of its own.
LIST_PAGE_BYTES = 4 * 1024 * 1024 - 16 * 1024


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(
        self,
        *,
        tenants: TenantStore,
        submitter: Submitter,
        canceller: Canceller,
        deleter: JobDeleter,
        jobs: JobStore,
        objects: ObjectStore,
        uploads: Uploads,
        bus: Bus,
        settings: GatewaySettings,
    ):
        self.tenants = tenants
        self.uploads = uploads
        self.submitter = submitter
        self.canceller = canceller
        self.deleter = deleter
        self.jobs = jobs
        self.objects = objects
        self.bus = bus
        self.settings = settings

    async def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context) -> jobs_pb2.SubmitJobResponse:
        key = await authenticate_key(self.tenants, context)
        # A submit outlasting a revocation (a tenant's removal) stores nothing that outlives the removal.
        return await self.submitter.submit(
            key.tenant, request, still_authorised=lambda: self.tenants.require_live(key)
        )

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context) -> jobs_pb2.Job:
        tenant = await authenticate(self.tenants, context)
        record = await self.jobs.get(tenant, checked_job_id(request.job_id))
        return await public_job(record, self.objects, self.settings.presign_expiry_seconds)

    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context) -> AsyncIterator[jobs_pb2.JobEvent]:
        key = await authenticate_key(self.tenants, context)
        job_id = checked_job_id(request.job_id)
        with self.tenants.hold_stream(key) as revoked:
            events = watch_job.watch(
                self.bus, self.jobs, key.tenant, job_id, request.after_sequence, revoked=revoked
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.WhichOneof("event") == "finished":
                        event = await self._with_job(key.tenant, job_id, event)
                    yield event

    async def _with_job(self, tenant: str, job_id: str, event: jobs_pb2.JobEvent) -> jobs_pb2.JobEvent:
        """The ``finished`` event with the ended job's public view (``JobFinished.job``); the event as it
        is when the record cannot be read (the watcher calls GetJob then)."""
        try:
            record = self.jobs.recent(tenant, job_id)  # an ended job's view no longer changes
            if record is None or not job_state.is_terminal(record):
                record = await self.jobs.load(tenant, job_id)
            if record is None or not job_state.is_terminal(record):
                return event
            view = await public_job(record, self.objects, self.settings.presign_expiry_seconds)
        except MultipassError as error:
            log.warning("finished event sent without its job", extra={"job_id": job_id, "error": str(error)})
            return event
        sent = jobs_pb2.JobEvent()
        sent.CopyFrom(event)
        sent.finished.job.CopyFrom(view)
        return sent

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context) -> jobs_pb2.CancelJobResponse:
        tenant = await authenticate(self.tenants, context)
        return await self.canceller.cancel(tenant, checked_job_id(request.job_id))

    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context) -> jobs_pb2.DeleteJobResponse:
        tenant = await authenticate(self.tenants, context)
        return await self.deleter.delete(tenant, checked_job_id(request.job_id))

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context) -> jobs_pb2.ListJobsResponse:
        tenant = await authenticate(self.tenants, context)
        problems = request_checks.list_jobs(request)
        after = ""
        try:
            after = parse_page_token(request.page_token)
        except InvalidInput as error:
            problems += error.violations
        if problems:
            raise InvalidInput.of(problems)
        size = request.page_size or request_checks.DEFAULT_PAGE_SIZE
        after_time = (
            request_checks.timestamp_seconds(request.created_after)
            if request.HasField("created_after")
            else None
        )
        before_time = (
            request_checks.timestamp_seconds(request.created_before)
            if request.HasField("created_before")
            else None
        )
        states = set(request.states)
        candidates = []
        for job_id in sorted(await self.jobs.job_ids(tenant), reverse=True):
            if after and job_id >= after:
                continue
            created = job_id_time(job_id)
            if created is None:
                continue
            if (after_time is not None and created < after_time) or (
                before_time is not None and created >= before_time
            ):
                continue
            candidates.append(job_id)
        response = jobs_pb2.ListJobsResponse()
        used = 0
        filtered = bool(states or request.idempotency_key_prefix)
        # Records are read a window at a time, concurrently: a filtered page may read many to fill.
        window = LIST_READ_WINDOW if filtered else size
        for start in range(0, len(candidates), window):
            ids = candidates[start : start + window]
            records = await asyncio.gather(*(self.jobs.load(tenant, job_id) for job_id in ids))
            for offset, (job_id, record) in enumerate(zip(ids, records, strict=True)):
                if record is None or (states and record.job.state not in states):
                    continue
                if not record.job.idempotency_key.startswith(request.idempotency_key_prefix):
                    continue
                view = await public_job(record, self.objects, self.settings.presign_expiry_seconds)
                entry_bytes = view.ByteSize() + 8  # the field's tag and length
                if response.jobs and used + entry_bytes > LIST_PAGE_BYTES:
                    response.next_page_token = page_token(response.jobs[-1].job_id)
                    return response
                response.jobs.append(view)
                used += entry_bytes
                if len(response.jobs) == size:
                    if start + offset + 1 < len(candidates):
                        response.next_page_token = page_token(job_id)
                    return response
        return response

    async def UploadImage(self, request_iterator, context) -> jobs_pb2.UploadImageResponse:
        async with drained_on_refusal(ClientStream(request_iterator)) as stream:
            key = await authenticate_key(self.tenants, context)
            tenant = key.tenant
            await self.uploads.check_room(tenant)
            limit = self.settings.limits.max_image_bytes
            data = bytearray()
            # A replica receives a bounded number of images at once (a tenant its share of them), each
            # given up when it stops sending: the bytes are held in memory until decoded.
            with self.uploads.slots.hold(tenant):
                parts = paced(
                    stream, self.settings.limits.upload_idle_seconds, "MULTIPASS_GATEWAY_UPLOAD_IDLE_SECONDS"
                )
                async for part in parts:
                    if part.WhichOneof("part") == "chunk":
                        data += part.chunk
                        if len(data) > limit:
                            raise InvalidInput.of(
                                [Violation("chunk", f"the image is larger than {limit} bytes")],
                                reason=Reason.IMAGE_TOO_LARGE,
                                metadata={"maxBytes": str(limit)},
                            )
                if not data:
                    raise InvalidInput.of([Violation("chunk", "no image data received")])
                # The alpha channel stays: transparent pixels read as white in an input image, as
                # black (keep) in a mask.
                image = await asyncio.to_thread(
                    decode_image,
                    data,
                    field="chunk",
                    max_pixels=self.settings.limits.max_image_pixels,
                    keep_alpha=True,
                )
                del data
        await self.tenants.require_live(
            key
        )  # revoked, or its tenant removed, while it was sent: nothing stored
        image_id = secrets.token_hex(12)
        uploaded = datetime.now(UTC)
        ref = await self.objects.put_image(names.BUCKET_JOBS, names.upload_key(tenant, image_id), image)
        response = jobs_pb2.UploadImageResponse(image_id=image_id, image=ref)
        expires = self.uploads.expires_at(uploaded)
        if expires is not None:
            response.expires_at.FromDatetime(expires)
        return response

    async def DeleteUpload(
        self, request: jobs_pb2.DeleteUploadRequest, context
    ) -> jobs_pb2.DeleteUploadResponse:
        tenant = await authenticate(self.tenants, context)
        await self.uploads.delete(tenant, request.image_id)
        return jobs_pb2.DeleteUploadResponse()

    async def GetCallbackKey(
        self, request: jobs_pb2.GetCallbackKeyRequest, context
    ) -> jobs_pb2.GetCallbackKeyResponse:
        tenant = await authenticate(self.tenants, context)
        key = tenant_key(self.settings.callbacks.signing_key, tenant)
        if not key:
            raise FailedPrecondition(
                "callbacks are disabled on this gateway (MULTIPASS_CALLBACK_SIGNING_KEY is not set)",
                reason=Reason.CALLBACKS_DISABLED,
            )
        return jobs_pb2.GetCallbackKeyResponse(callback_signing_key=key)
