"""The gateway's Prometheus metrics (names are a contract with the dashboards and alerts)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from multipass.metrics import LONG_BUCKETS

JOBS_SUBMITTED = Counter("multipass_jobs_submitted_total", "Jobs accepted by SubmitJob.")
JOBS_FINISHED = Counter(
    "multipass_jobs_finished_total", "Jobs that reached a terminal state, by state.", ["state"]
)
JOBS_FAILED = Counter(
    "multipass_jobs_failed_total",
    "Jobs that ended FAILED, by the error's code and the kind of the pass that failed ('' when none did).",
    ["code", "pass_kind"],
)
JOB_DURATION = Histogram(
    "multipass_job_duration_seconds", "Seconds from submit to the terminal state.", buckets=LONG_BUCKETS
)
TENANT_JOBS_SUBMITTED = Counter(
    "multipass_tenant_jobs_submitted_total", "Jobs accepted by SubmitJob, by tenant.", ["tenant"]
)
TENANT_JOBS_FINISHED = Counter(
    "multipass_tenant_jobs_finished_total",
    "Jobs that reached a terminal state, by tenant and state.",
    ["tenant", "state"],
)
TENANT_DEVICE_SECONDS = Counter(
    "multipass_tenant_device_seconds_total",
    "Seconds the passes of a tenant's finished jobs ran on diffusion workers (started to finished), by tenant.",
    ["tenant"],
)
QUEUE_PENDING = Gauge(
    "multipass_queue_pending_passes",
    "Pass requests not finished yet (pending + in flight) per work-queue consumer, from JetStream consumer info.",
    ["consumer"],
)
CALLBACKS = Counter(
    "multipass_callbacks_total", "Callback deliveries by outcome (delivered, retried, failed).", ["outcome"]
)
for _outcome in ("delivered", "retried", "failed"):  # exported at 0, so a first increase is a rate
    CALLBACKS.labels(outcome=_outcome)
PASSES_READY = Gauge(
    "multipass_gateway_passes_ready",
    "Pass requests waiting in the gateway's per-tenant ready queues for an in-flight slot.",
)
PASSES_IN_FLIGHT = Gauge(
    "multipass_gateway_passes_in_flight",
    "Pass requests released to the work queue whose pass has not ended yet.",
)
TENANT_PASSES_READY = Gauge(
    "multipass_tenant_passes_ready",
    "Pass requests of the tenant waiting in the gateway's ready queues (MULTIPASS_GATEWAY_TENANT_METRICS).",
    ["tenant"],
)
TENANT_PASSES_IN_FLIGHT = Gauge(
    "multipass_tenant_passes_in_flight",
    "Pass requests of the tenant released to the work queue and unfinished, against its in-flight limit "
    "(MULTIPASS_GATEWAY_TENANT_METRICS).",
    ["tenant"],
)
PASSES_RELEASED = Counter(
    "multipass_gateway_passes_released_total", "Pass requests released to the work queue by the scheduler."
)
JOB_RECORD_WRITES = Counter(
    "multipass_gateway_job_record_writes_total",
    "Job record compare-and-set attempts by outcome: written; conflict (another writer came first, so the "
    "record is read and the change made again); confirm (the remembered record needed no change, so the "
    "stored one is read to confirm it).",
    ["outcome"],
)
UPLOADS_DELETED = Counter(
    "multipass_gateway_uploads_deleted_total",
    "Uploaded images removed, by cause: deleted (DeleteUpload) or expired (older than the upload TTL).",
    ["cause"],
)
JOBS_EXPIRED = Counter(
    "multipass_gateway_jobs_expired_total",
    "Finished jobs deleted (record, events and images) because they ended longer ago than the job retention.",
)
for _cause in ("deleted", "expired"):  # both series exist (at 0) before the first removal
    UPLOADS_DELETED.labels(cause=_cause)
