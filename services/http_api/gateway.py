"""The gateway's public gRPC API as this service sees it: async stubs of Jobs and Tunes over one channel.

Nothing here authenticates: every call forwards the caller's ``authorization`` header as gRPC metadata and
the gateway decides. Calls raise ``grpc.aio.AioRpcError``; :mod:`multipass_http_api.errors` maps it to HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from multipass.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

#: Largest message the gateway may answer with (a page of jobs with their plans).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class GatewayClient:
    """One channel to the gateway; every call carries the caller's credentials."""

    def __init__(self, target: str, *, timeout_seconds: float = 30.0):
        self.target = target
        self.timeout_seconds = timeout_seconds
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.tunes = jobs_pb2_grpc.TunesStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def serving(self, timeout_seconds: float = 2.0) -> str:
        """ "" when the gateway's gRPC health answers SERVING within ``timeout_seconds``; else why not."""
        try:
            answer = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            return f"the gateway at {self.target} does not answer: {error.code().name}"
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return f"the gateway at {self.target} is {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
        return ""

    @staticmethod
    def metadata(authorization: str | None) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying the caller's ``Authorization`` header unchanged (none when absent)."""
        return (("authorization", authorization),) if authorization else ()

    # Jobs --------------------------------------------------------------------------------------------

    async def submit_job(self, authorization: str | None, request: jobs_pb2.SubmitJobRequest):
        return await self.jobs.SubmitJob(
            request, metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def get_job(self, authorization: str | None, job_id: str) -> jobs_pb2.Job:
        return await self.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )

    async def list_jobs(self, authorization: str | None, request: jobs_pb2.ListJobsRequest):
        return await self.jobs.ListJobs(
            request, metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def delete_job(self, authorization: str | None, job_id: str) -> jobs_pb2.DeleteJobResponse:
        return await self.jobs.DeleteJob(
            jobs_pb2.DeleteJobRequest(job_id=job_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )

    async def cancel_job(self, authorization: str | None, job_id: str) -> jobs_pb2.CancelJobResponse:
        return await self.jobs.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )

    def watch_job(self, authorization: str | None, job_id: str, after_sequence: int = 0):
        """The job's event stream (a call object: iterate it, ``cancel()`` it to stop early)."""
        return self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence),
            metadata=self.metadata(authorization),
        )

    async def upload_image(
        self, authorization: str | None, filename: str, chunks: Iterable[bytes] | AsyncIterator[bytes]
    ) -> jobs_pb2.UploadImageResponse:
        """Upload an image (input or mask) in chunks of at most 1 MiB; returns its id."""

        async def requests():
            yield jobs_pb2.UploadImageRequest(filename=filename)
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    for part in _split(chunk):
                        yield jobs_pb2.UploadImageRequest(chunk=part)
            else:
                for chunk in chunks:
                    for part in _split(chunk):
                        yield jobs_pb2.UploadImageRequest(chunk=part)

        return await self.jobs.UploadImage(
            requests(), metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def delete_upload(self, authorization: str | None, image_id: str) -> jobs_pb2.DeleteUploadResponse:
        return await self.jobs.DeleteUpload(
            jobs_pb2.DeleteUploadRequest(image_id=image_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )

    async def discard_uploads(self, authorization: str | None, image_ids: Iterable[str]) -> None:
        """Delete uploads made for one request once the gateway holds its own copies (a job its inputs, a
        tune its reference faces). Best effort: one left behind expires with the gateway's upload TTL."""
        for image_id in image_ids:
            if not image_id:
                continue
            try:
                await self.delete_upload(authorization, image_id)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning("upload not deleted", extra={"image_id": image_id, "code": error.code().name})

    # Tunes -------------------------------------------------------------------------------------------

    async def register_tune(
        self,
        authorization: str | None,
        metadata: jobs_pb2.TuneMetadata,
        chunks: Iterable[bytes] | AsyncIterator[bytes] = (),
    ) -> jobs_pb2.Tune:
        """Register a tune from its metadata and the file's bytes (or ``metadata.url``)."""

        async def requests():
            yield jobs_pb2.RegisterTuneRequest(metadata=metadata)
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    for part in _split(chunk):
                        yield jobs_pb2.RegisterTuneRequest(chunk=part)
            else:
                for chunk in chunks:
                    for part in _split(chunk):
                        yield jobs_pb2.RegisterTuneRequest(chunk=part)

        return await self.tunes.RegisterTune(
            requests(), metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def callback_key(self, authorization: str | None) -> str:
        """The caller's tenant's callback signing key (``GetCallbackKey``)."""
        answer = await self.jobs.GetCallbackKey(
            jobs_pb2.GetCallbackKeyRequest(),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )
        return answer.callback_signing_key

    async def get_tune(self, authorization: str | None, tune_id: str) -> jobs_pb2.Tune:
        return await self.tunes.GetTune(
            jobs_pb2.GetTuneRequest(tune_id=tune_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )

    async def list_tunes(self, authorization: str | None, request: jobs_pb2.ListTunesRequest):
        return await self.tunes.ListTunes(
            request, metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def update_tune(
        self, authorization: str | None, request: jobs_pb2.UpdateTuneRequest
    ) -> jobs_pb2.Tune:
        return await self.tunes.UpdateTune(
            request, metadata=self.metadata(authorization), timeout=self.timeout_seconds
        )

    async def delete_tune(self, authorization: str | None, tune_id: str) -> jobs_pb2.DeleteTuneResponse:
        return await self.tunes.DeleteTune(
            jobs_pb2.DeleteTuneRequest(tune_id=tune_id),
            metadata=self.metadata(authorization),
            timeout=self.timeout_seconds,
        )


#: Largest chunk of one streamed upload message (the gateway accepts at most 1 MiB).
CHUNK_BYTES = 1024 * 1024


def _split(data: bytes) -> Iterable[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]
