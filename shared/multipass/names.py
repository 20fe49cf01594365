"""Every name Multipass addresses things by: NATS streams, subjects, consumers, KV buckets and keys, message
ids, object-store buckets and object keys (the table is docs/CONTRACTS.md).

Builders validate what they put into a subject: a model name or job id holding ``.``, ``*``, ``>`` or
whitespace would silently address other subjects, so it is refused with :class:`InvalidInput`.
"""

from __future__ import annotations

import re

from multipass.errors import InvalidInput, Violation, echo

# Streams.
STREAM_PASSES = "MULTIPASS_PASSES"
STREAM_EVENTS = "MULTIPASS_EVENTS"
STREAM_JOB_EVENTS = "MULTIPASS_JOB_EVENTS"
#: Keeps JetStream's max-deliveries advisories of the pass queue until a gateway has handled them.
STREAM_ADVISORIES = "MULTIPASS_ADVISORIES"

# Subject roots and the wildcard each stream captures.
PASS_PREFIX = "multipass.pass"
EVENTS_PREFIX = "multipass.events"
JOB_EVENTS_PREFIX = "multipass.jobevents"
CANCEL_PREFIX = "multipass.cancel"
PASSES_SUBJECTS = f"{PASS_PREFIX}.>"
EVENTS_SUBJECTS = f"{EVENTS_PREFIX}.>"
JOB_EVENTS_SUBJECTS = f"{JOB_EVENTS_PREFIX}.>"
#: Every diffusion pass, whatever the model.
DIFFUSION_PASSES = f"{PASS_PREFIX}.diffusion.>"
#: Every cancel broadcast (a worker serving many jobs subscribes once).
CANCEL_ALL = f"{CANCEL_PREFIX}.*"
#: Core NATS (no stream): gateway replicas tell each other their scheduler and budget writes.
GATEWAY_NOTES = "multipass.gateway.notes"
#: JetStream's advisory for a pass request whose last allowed delivery went unanswered (captured by
#: ``STREAM_ADVISORIES``, so one sent while no gateway is connected waits for one).
PASS_MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM_PASSES}.*"
#: The gateway replicas' shared durable consumer of ``STREAM_ADVISORIES``.
ABANDONED_PASSES_DURABLE = "gateway-abandoned-passes"

#: The gateway's own work queue (segmentation passes and face detection before a faces pass).
GATEWAY_PASS_SUBJECT = f"{PASS_PREFIX}.gateway"
GATEWAY_PASS_DURABLE = "gateway-passes"
#: The orchestrator's durable consumer of every pass event, shared by every gateway replica.
ORCHESTRATOR_DURABLE = "gateway-orchestrator"

# Pass event names (last token of an event subject).
EVENT_STARTED = "started"
EVENT_PROGRESS = "progress"
EVENT_COMPLETED = "completed"
EVENT_FAILED = "failed"
PASS_EVENTS = (EVENT_STARTED, EVENT_PROGRESS, EVENT_COMPLETED, EVENT_FAILED)

# KV buckets.
KV_JOBS = "multipass-jobs"
KV_IDEMPOTENCY = "multipass-idempotency"
KV_TENANTS = "multipass-tenants"
KV_TUNES = "multipass-tunes"
KV_BUCKETS = (KV_JOBS, KV_IDEMPOTENCY, KV_TENANTS, KV_TUNES)

# Object-store buckets.
BUCKET_JOBS = "multipass-jobs"
BUCKET_TUNES = "multipass-tunes"
BUCKET_MODELS = "multipass-models"
OBJECT_BUCKETS = (BUCKET_JOBS, BUCKET_TUNES, BUCKET_MODELS)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_token(value: str, field: str) -> str:
    """``value`` if it is a safe subject token (letters, digits, ``_``, ``-``; 1..128), else InvalidInput."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidInput.of(
            [
                Violation(
                    field,
                    f"got {echo(value)}; expected 1..128 letters, digits, '_' or '-' (a NATS subject token)",
                )
            ]
        )
    return value


# --- subjects and consumers --------------------------------------------------------------------------


def diffusion_pass_subject(model: str) -> str:
    """``multipass.pass.diffusion.<model>``: pass requests for workers serving ``model``."""
    return f"{PASS_PREFIX}.diffusion.{check_token(model, 'model')}"


def diffusion_durable(model: str) -> str:
    """Durable consumer name shared by every diffusion worker serving ``model`` (and by lag metrics)."""
    return f"diffusion-{check_token(model, 'model')}"


def event_subject(job_id: str, event: str) -> str:
    """``multipass.events.<job_id>.<event>`` (payload ``PassEvent``)."""
    return f"{EVENTS_PREFIX}.{check_token(job_id, 'job_id')}.{check_token(event, 'event')}"


def job_events_filter(job_id: str) -> str:
    """``multipass.events.<job_id>.>``: every pass event of one job."""
    return f"{EVENTS_PREFIX}.{check_token(job_id, 'job_id')}.>"


def job_event_subject(job_id: str) -> str:
    """``multipass.jobevents.<job_id>`` (payload ``JobEvent``; WatchJob replays it)."""
    return f"{JOB_EVENTS_PREFIX}.{check_token(job_id, 'job_id')}"


def cancel_subject(job_id: str) -> str:
    """``multipass.cancel.<job_id>``: core NATS broadcast asking workers to stop the job."""
    return f"{CANCEL_PREFIX}.{check_token(job_id, 'job_id')}"


def job_id_from_subject(subject: str) -> str:
    """The job id in an event, job-event or cancel subject; InvalidInput for any other subject."""
    parts = subject.split(".")
    if len(parts) >= 3 and ".".join(parts[:2]) in (EVENTS_PREFIX, JOB_EVENTS_PREFIX, CANCEL_PREFIX):
        return check_token(parts[2], "subject")
    raise InvalidInput.of([Violation("subject", f"got {subject!r}; not a per-job subject")])


# --- message ids -------------------------------------------------------------------------------------


def pass_msg_id(job_id: str, image: int, pass_name: str, attempt: int, suffix: str = "") -> str:
    """``Nats-Msg-Id`` of a publish: ``<job_id>:<image>:<pass>:<attempt>[:<suffix>]``.

    Events put ``<event>[:<step>]`` in ``suffix``. JetStream drops a second publish with the same id
    inside the duplicate window, so a retried publish is harmless; a new attempt gets a new id.
    """
    problems: list[Violation] = []
    if not isinstance(job_id, str) or not _TOKEN.match(job_id):
        problems.append(Violation("job_id", f"got {job_id!r}; expected a NATS subject token"))
    if isinstance(image, bool) or not isinstance(image, int) or image < 0:
        problems.append(Violation("image", f"got {image!r}; expected an integer >= 0"))
    if not isinstance(pass_name, str) or not pass_name or any(c.isspace() or c == ":" for c in pass_name):
        problems.append(
            Violation("pass_name", f"got {pass_name!r}; expected a non-empty name without ':' or spaces")
        )
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        problems.append(Violation("attempt", f"got {attempt!r}; expected an integer >= 0"))
    if any(c.isspace() for c in suffix):
        problems.append(Violation("suffix", f"got {suffix!r}; expected no spaces"))
    if problems:
        raise InvalidInput.of(problems)
    msg_id = f"{job_id}:{image}:{pass_name}:{attempt}"
    return f"{msg_id}:{suffix}" if suffix else msg_id


# --- KV keys -----------------------------------------------------------------------------------------


def job_key(tenant: str, job_id: str) -> str:
    """KV key of a job record in ``multipass-jobs``."""
    return f"{tenant}.{job_id}"


#: KV key in ``multipass-jobs`` of the last ``Diffusion.Info`` answer a gateway got (an ``InfoResponse``):
#: what SubmitJob checks against while no diffusion worker runs.
DIFFUSION_INFO_KEY = "info.diffusion"


def active_key(tenant: str, job_id: str) -> str:
    """KV marker of an unfinished job (value: its planned pass count), for the pending-work budgets."""
    return f"active.{tenant}.{job_id}"


def tune_key(tenant: str, tune_id: str) -> str:
    """KV key of a tune record in ``multipass-tunes``."""
    return f"{tenant}.{tune_id}"


# --- object keys -------------------------------------------------------------------------------------


def job_prefix(tenant: str, job_id: str) -> str:
    return f"jobs/{tenant}/{job_id}/"


def image_prefix(tenant: str, job_id: str, image_index: int) -> str:
    return f"jobs/{tenant}/{job_id}/image-{image_index}/"


def pass_output_key(tenant: str, job_id: str, image_index: int, pass_name: str) -> str:
    return f"{image_prefix(tenant, job_id, image_index)}{pass_name}.png"


def layout_prefix(tenant: str) -> str:
    """Where a tenant's default-layout pose images live (content-addressed, shared by its jobs)."""
    return f"jobs/{tenant}/layouts/"


def input_key(tenant: str, job_id: str, name: str) -> str:
    return f"jobs/{tenant}/{job_id}/inputs/{name}.png"


def upload_key(tenant: str, image_id: str) -> str:
    return f"uploads/{tenant}/{image_id}.png"


def tune_prefix(tenant: str, tune_id: str) -> str:
    return f"tunes/{tenant}/{tune_id}/"
