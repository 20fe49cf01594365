"""Typed calls of the ``Jobs`` service: submit, upload, get, watch (resumable), wait, cancel, list."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import grpc

from multipass.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

#: Upload chunks stay well under gRPC's 4 MiB default message limit.
CHUNK_BYTES = 1024 * 1024
TERMINAL_STATES = frozenset(
    {
        jobs_pb2.JOB_STATE_SUCCEEDED,
        jobs_pb2.JOB_STATE_FAILED,
        jobs_pb2.JOB_STATE_PARTIAL,
        jobs_pb2.JOB_STATE_CANCELLED,
    }
)
#: Codes after which a broken WatchJob stream is resumed from the last sequence seen.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def state_name(state: int) -> str:
    """``SUCCEEDED`` for ``JOB_STATE_SUCCEEDED``."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def parse_state(name: str) -> int:
    """The JobState for ``succeeded``, ``SUCCEEDED`` or ``JOB_STATE_SUCCEEDED``."""
    key = name.strip().upper()
    key = key if key.startswith("JOB_STATE_") else f"JOB_STATE_{key}"
    try:
        return jobs_pb2.JobState.Value(key)
    except ValueError:
        known = ", ".join(state_name(v) for v in jobs_pb2.JobState.values() if v).lower()
        raise ValueError(f"unknown job state {name!r}; one of {known}") from None


class JobsClient:
    def __init__(self, channel: grpc.Channel, *, timeout: float = 30.0):
        self._stub = jobs_pb2_grpc.JobsStub(channel)
        self._timeout = timeout

    def submit(
        self,
        prompt: str,
        params: Mapping[str, str] | None = None,
        *,
        input_image_id: str = "",
        mask_image_id: str = "",
        callback_url: str = "",
        idempotency_key: str = "",
    ) -> jobs_pb2.SubmitJobResponse:
        request = jobs_pb2.SubmitJobRequest(
            prompt=prompt,
            params=dict(params or {}),
            input_image_id=input_image_id,
            mask_image_id=mask_image_id,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
        )
        return self._stub.SubmitJob(request, timeout=self._timeout)

    def upload_image(self, data: bytes | Path, filename: str | None = None) -> jobs_pb2.UploadImageResponse:
        """Upload an image file (or bytes) in 1 MiB chunks; the id goes into ``submit(input_image_id=...)``."""
        if isinstance(data, Path):
            filename = filename or data.name
            data = data.read_bytes()

        def parts() -> Iterator[jobs_pb2.UploadImageRequest]:
            yield jobs_pb2.UploadImageRequest(filename=filename or "image")
            for start in range(0, len(data), CHUNK_BYTES):
                yield jobs_pb2.UploadImageRequest(chunk=data[start : start + CHUNK_BYTES])

        return self._stub.UploadImage(parts(), timeout=self._timeout)

    def delete_upload(self, image_id: str) -> None:
        """Delete an uploaded image now (jobs and tunes that used it keep their own copies)."""
        self._stub.DeleteUpload(jobs_pb2.DeleteUploadRequest(image_id=image_id), timeout=self._timeout)

    def callback_key(self) -> str:
        """The key this tenant's callbacks are signed with (X-Multipass-Signature), to check them."""
        return self._stub.GetCallbackKey(
            jobs_pb2.GetCallbackKeyRequest(), timeout=self._timeout
        ).callback_signing_key

    def discard_uploads(self, image_ids: Iterable[str]) -> None:
        """Delete the uploads a command made for one request, once that request has its copies; one
        already gone is fine."""
        import grpc

        for image_id in image_ids:
            if not image_id:
                continue
            try:
                self.delete_upload(image_id)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self._stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=self._timeout)

    def cancel(self, job_id: str) -> jobs_pb2.CancelJobResponse:
        return self._stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=self._timeout)

    def delete(self, job_id: str) -> jobs_pb2.DeleteJobResponse:
        """Delete the job (cancelled first if it still runs) with every image it stored."""
        return self._stub.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job_id), timeout=self._timeout)

    def list_page(
        self,
        *,
        states: Iterable[int] = (),
        page_size: int = 20,
        page_token: str = "",
        idempotency_key_prefix: str = "",
    ) -> jobs_pb2.ListJobsResponse:
        request = jobs_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            states=list(states),
            idempotency_key_prefix=idempotency_key_prefix,
        )
        return self._stub.ListJobs(request, timeout=self._timeout)

    def list(
        self,
        *,
        states: Iterable[int] = (),
        limit: int | None = None,
        page_size: int = 50,
        idempotency_key_prefix: str = "",
    ) -> Iterator[jobs_pb2.Job]:
        """The caller's jobs, newest first, following page tokens until ``limit`` jobs or the end; only
        those whose idempotency key starts with ``idempotency_key_prefix`` when it is given."""
        states, token, seen = list(states), "", 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen, 100))
            page = self.list_page(
                states=states, page_size=size, page_token=token, idempotency_key_prefix=idempotency_key_prefix
            )
            for job in page.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            token = page.next_page_token
            if not token or (limit is not None and seen >= limit):
                return

    def watch(
        self,
        job_id: str,
        after_sequence: int = 0,
        *,
        resume_attempts: int = 10,
        resume_delay: float = 0.5,
    ) -> Iterator[jobs_pb2.JobEvent]:
        """Events after ``after_sequence`` until the job ends.

        A stream broken by the server going away (UNAVAILABLE, e.g. a restarted gateway) is reopened from
        the last sequence received, up to ``resume_attempts`` times in a row; other errors propagate.
        """
        last, failures = after_sequence, 0
        while True:
            stream = self._stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=last))
            try:
                for event in stream:
                    failures = 0
                    last = max(last, event.sequence)
                    yield event
                    if event.WhichOneof("event") == "finished":
                        return
                return
            except grpc.RpcError as error:
                if error.code() not in RESUMABLE_CODES or failures >= resume_attempts:
                    raise
                failures += 1
                log.warning(
                    "watch of %s broke (%s); resuming after sequence %d", job_id, error.code().name, last
                )
                time.sleep(min(5.0, resume_delay * 2 ** (failures - 1)))
            finally:
                stream.cancel()

    def wait(
        self,
        job_id: str,
        *,
        on_event: Callable[[jobs_pb2.JobEvent], None] | None = None,
        after_sequence: int = 0,
        timeout: float | None = None,
    ) -> jobs_pb2.Job:
        """Follow the job's events until it ends (or ``timeout`` seconds pass), then return the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        if job.state in TERMINAL_STATES:
            if on_event is not None:
                for event in self.watch(job_id, after_sequence):
                    on_event(event)
            return job
        for event in self.watch(job_id, after_sequence):
            if on_event is not None:
                on_event(event)
            if event.HasField("finished") and event.finished.HasField("job"):
                return event.finished.job  # the stream sends the ended job with its last event
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
        return self.get(job_id)
