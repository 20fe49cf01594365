"""Job callbacks: the finished job POSTed as JSON to its callback_url, signed, retried, outcome recorded.

Delivery is at least once, claimed on the job record so one replica delivers at a time; the URL is
checked against the address policy on every attempt. The signature and the delivery rules:
docs/CONTRACTS.md ("Callbacks"). Each tenant's callbacks are signed with its own key
(:func:`multipass.callback_signing.tenant_key`); receivers check them with :func:`verify`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from google.protobuf import json_format

from multipass.callback_signing import SIGNATURE_HEADER, TENANT_HEADER, sign, tenant_key
from multipass.callback_signing import verify as verify  # re-exported: the receivers' check
from multipass.v1 import events_pb2, jobs_pb2
from multipass_gateway.infra import metrics
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.settings import CallbackSettings

log = logging.getLogger(__name__)

#: The public Job (with URLs) of a record, as a callback carries it.
JobLoader = Callable[[events_pb2.JobRecord], Awaitable[jobs_pb2.Job]]

#: Statuses after which another attempt may succeed.
_RETRY_STATUSES = frozenset({408, 425, 429})


def job_json(job: jobs_pb2.Job) -> bytes:
    """The job as proto3 JSON with the proto field names (what GetJob returns, as JSON)."""
    return json_format.MessageToJson(
        job, preserving_proto_field_name=True, indent=None, sort_keys=True
    ).encode("utf-8")


def backoff_delays(attempts: int, base: float) -> list[float]:
    """Delays before attempts 2..N: base, 2*base, 4*base, ..."""
    return [base * 2**index for index in range(max(0, attempts - 1))]


def retriable_status(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUSES


class CallbackSender:
    """Delivers one job's callback; ``load_job`` gives the public job (with URLs) to send."""

    def __init__(
        self,
        http: SafeHttp,
        settings: CallbackSettings,
        *,
        claim: Callable[[str, str, datetime], Awaitable[events_pb2.JobRecord | None]],
        record_outcome: Callable[[str, str, str, int], Awaitable[None]],
        load_job: JobLoader,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._http = http
        self._settings = settings
        self._claim = claim
        self._record = record_outcome
        self._load_job = load_job
        self._sleep = sleep

    def budget_seconds(self) -> float:
        attempts = self._settings.max_attempts
        return (
            sum(backoff_delays(attempts, self._settings.backoff_seconds))
            + attempts * (self._settings.timeout_seconds + 1)
            + 5
        )

    async def deliver(self, tenant: str, job_id: str) -> str | None:
        """Claim and deliver; returns the outcome recorded, or None when another replica holds the claim."""
        record = await self._claim(
            tenant, job_id, datetime.now().astimezone() + timedelta(seconds=self.budget_seconds())
        )
        if record is None or not record.job.callback_url:
            return None
        job = await self._load_job(record)
        body = job_json(job)
        url = record.job.callback_url
        key = tenant_key(self._settings.signing_key, tenant)
        delays = backoff_delays(self._settings.max_attempts, self._settings.backoff_seconds)
        outcome = ""
        attempt = 0
        for attempt in range(1, self._settings.max_attempts + 1):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(body, key, timestamp),
                TENANT_HEADER: tenant,
                "X-Multipass-Job-Id": job_id,
                "X-Multipass-Attempt": str(attempt),
            }
            try:
                status = await self._http.post(url, body, headers, timeout=self._settings.timeout_seconds)
            except FetchError as error:
                reason, permanent = error.reason, error.permanent
            else:
                if 200 <= status < 300:
                    outcome = f"delivered (HTTP {status}, attempt {attempt})"
                    metrics.CALLBACKS.labels(outcome="delivered").inc()
                    break
                reason, permanent = f"HTTP {status}", not retriable_status(status)
            log.warning(
                "callback attempt failed",
                extra={"job_id": job_id, "attempt": attempt, "reason": reason, "permanent": permanent},
            )
            if permanent or attempt == self._settings.max_attempts:
                outcome = f"failed after {attempt} attempts: {reason}"
                metrics.CALLBACKS.labels(outcome="failed").inc()
                break
            metrics.CALLBACKS.labels(outcome="retried").inc()
            await self._sleep(delays[attempt - 1])
        await self._record(tenant, job_id, outcome, attempt)
        log.info("callback finished", extra={"job_id": job_id, "outcome": outcome})
        return outcome
