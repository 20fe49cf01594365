"""Idempotency keys of SubmitJob: what a key is bound to, and when a repeat is the same request.

A key (per tenant) is bound to the first job submitted with it, together with a fingerprint of that
request's body and the warnings its answer carried. A repeat with the same body gets the same answer
(``existing`` set); a repeat with another body is refused with FAILED_PRECONDITION naming the key, as a
key names one request, not a slot to fill (Google's ``request_id`` rule, AIP-155).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from multipass.errors import FailedPrecondition, Reason, Violation, echo
from multipass.v1 import jobs_pb2


def fingerprint(request: jobs_pb2.SubmitJobRequest) -> str:
    """SHA-256 (hex) of the request body without its idempotency key; map order does not matter."""
    body = jobs_pb2.SubmitJobRequest()
    body.CopyFrom(request)
    body.ClearField("idempotency_key")
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Binding:
    """What a key is bound to: the job, the fingerprint of its request ("" when unknown) and its warnings."""

    job_id: str
    fingerprint: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        return json.dumps(
            {"job_id": self.job_id, "fingerprint": self.fingerprint, "warnings": list(self.warnings)}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Binding:
        """A stored binding; a bare job id (as stored before fingerprints) binds without one."""
        text = data.decode("utf-8", "replace")
        if not text.startswith("{"):
            return cls(job_id=text)
        value = json.loads(text)
        return cls(
            job_id=str(value["job_id"]),
            fingerprint=str(value.get("fingerprint", "")),
            warnings=tuple(str(w) for w in value.get("warnings", ())),
        )


def replay(binding: Binding, key: str, request_fingerprint: str) -> jobs_pb2.SubmitJobResponse:
    """The answer to a repeat of ``key``: the bound job with its original warnings, or FailedPrecondition
    when the repeat's body differs from the one the key was first used with."""
    if binding.fingerprint and binding.fingerprint != request_fingerprint:
        problem = Violation(
            "idempotency_key",
            f"{echo(key)} was first used for job {binding.job_id} with a different request; resend that "
            "request unchanged to get its job, or use a new key for a new job",
        )
        raise FailedPrecondition(
            f"{problem.field}: {problem.description}",
            violations=[problem],
            reason=Reason.IDEMPOTENCY_KEY_REUSED,
            metadata={"idempotencyKey": key, "jobId": binding.job_id},
        )
    return jobs_pb2.SubmitJobResponse(job_id=binding.job_id, existing=True, warnings=list(binding.warnings))
