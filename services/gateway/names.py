"""Names the gateway owns: its work subject and consumers, and where a job's objects live (pure)."""

from __future__ import annotations

from multipass import subjects

#: Buckets (docs/CONTRACTS.md); the same names as ``multipass.store`` without importing the S3 client.
BUCKET_JOBS = "multipass-jobs"
BUCKET_TUNES = "multipass-tunes"

#: The gateway's own work queue (segmentation passes and face detection before a faces pass).
GATEWAY_PASS_SUBJECT = f"{subjects.PASS_PREFIX}.gateway"
GATEWAY_PASS_DURABLE = "gateway-passes"
#: The orchestrator's durable consumer of every pass event, shared by every gateway replica.
ORCHESTRATOR_DURABLE = "gateway-orchestrator"


def job_prefix(tenant: str, job_id: str) -> str:
    return f"jobs/{tenant}/{job_id}/"


def image_prefix(tenant: str, job_id: str, image_index: int) -> str:
    return f"jobs/{tenant}/{job_id}/image-{image_index}/"


def pass_output_key(tenant: str, job_id: str, image_index: int, pass_name: str) -> str:
    return f"{image_prefix(tenant, job_id, image_index)}{pass_name}.png"


def input_key(tenant: str, job_id: str, name: str) -> str:
    return f"jobs/{tenant}/{job_id}/inputs/{name}.png"


def upload_key(tenant: str, image_id: str) -> str:
    return f"uploads/{tenant}/{image_id}.png"


def tune_prefix(tenant: str, tune_id: str) -> str:
    return f"tunes/{tenant}/{tune_id}/"


def job_key(tenant: str, job_id: str) -> str:
    """KV key of a job record in ``multipass-jobs``."""
    return f"{tenant}.{job_id}"


def active_key(tenant: str, job_id: str) -> str:
    """KV marker of an unfinished job (value: its planned pass count), for the pending-pass budgets."""
    return f"active.{tenant}.{job_id}"


def tune_key(tenant: str, tune_id: str) -> str:
    return f"{tenant}.{tune_id}"
