"""A gateway ``Job`` as Astria's prompt object (create, retrieve, list and callback bodies).

Astria has no status field: a prompt is done when ``images`` is non-empty, failed when ``user_error`` is
set, and ``trained_at`` marks a finished prompt. Parameters the request did not set are ``null``, as
Astria returns them; ``seed`` is the seed the job really used. Beyond Astria: ``status``, ``progress`` and
``warnings`` (ours and the request's, e.g. ignored unknown fields).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from multipass.v1 import jobs_pb2
from multipass_http_api.astria.origin import Origin, origin_of
from multipass_http_api.astria.prompt_form import BOOLEAN_PARAMS

DONE = frozenset({jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_PARTIAL})
TERMINAL = DONE | {jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}
_NUMBERS = {"steps": int, "w": int, "h": int, "num_images": int}
_FLOATS = ("cfg_scale", "controlnet_conditioning_scale", "denoising_strength")
_TEXTS = ("ar", "scheduler", "controlnet", "color_grading", "input_image_url", "mask_image_url")
#: JSON integers above this lose precision in JavaScript clients; larger ids stay strings.
_SAFE_INTEGER = 2**53 - 1


def astria_time(stamp: timestamp_pb2.Timestamp | None) -> str | None:
    """``2024-05-01T12:00:00.123Z`` as Astria (Rails) writes times; None when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    moment = datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def astria_id(value: str | None) -> int | str | None:
    """Digits as a JSON number (Astria's ids are numbers) when JavaScript can hold it exactly."""
    if value and value.isdigit() and int(value) <= _SAFE_INTEGER:
        return int(value)
    return value or None


def _started(job: jobs_pb2.Job) -> timestamp_pb2.Timestamp | None:
    stamps = [
        step.started_at
        for image in job.images
        for step in image.passes
        if step.started_at.seconds or step.started_at.nanos
    ]
    return min(stamps, key=lambda s: (s.seconds, s.nanos)) if stamps else None


def user_error(job: jobs_pb2.Job) -> str | None:
    """Why the prompt produced no image; None unless it failed or was cancelled."""
    if job.state == jobs_pb2.JOB_STATE_CANCELLED:
        return "the prompt was cancelled"
    if job.state != jobs_pb2.JOB_STATE_FAILED:
        return None
    messages = [job.error.message] + [image.error.message for image in job.images]
    return next((message for message in messages if message), "the prompt failed")


def _param_values(job: jobs_pb2.Job) -> dict[str, object]:
    params = job.parsed.params
    explicit = set(job.parsed.explicit_params)
    values: dict[str, object] = {}
    for name in ("steps", "w", "h", *_FLOATS, *_TEXTS):
        if name not in explicit:
            values[name] = None
        elif name in _FLOATS:
            values[name] = round(float(getattr(params, name)), 4)
        else:
            values[name] = getattr(params, name)
    for name in BOOLEAN_PARAMS:
        values[name] = bool(getattr(params, name))
    values["num_images"] = params.num_images or len(job.images) or 1
    values["negative_prompt"] = params.negative_prompt
    if job.images:
        values["seed"] = job.images[0].seed
    else:
        values["seed"] = params.seed if params.HasField("seed") else None
    return values


def prompt_url(base_url: str, tune_id: str | None, job_id: str) -> str:
    if tune_id:
        return f"{base_url}/tunes/{tune_id}/prompts/{job_id}.json"
    return f"{base_url}/prompts/{job_id}.json"


def prompt_object(
    job: jobs_pb2.Job,
    *,
    base_url: str,
    callback: str | None,
    image_url: Callable[[jobs_pb2.Job, jobs_pb2.OutputImage], str],
    warnings: Iterable[str] = (),
) -> dict[str, object]:
    """The Astria prompt object of ``job``. ``image_url`` gives the download URL of a finished image."""
    origin = origin_of(job.idempotency_key) or Origin("")
    tune_id = origin.tune_id or None
    images = (
        [url for image in job.images if image.final.key and (url := image_url(job, image))]
        if job.state in DONE
        else []
    )
    finished = job.finished_at if job.HasField("finished_at") else None
    obj: dict[str, object] = {
        "id": job.job_id,
        "tune_id": astria_id(tune_id),
        "text": origin.astria_text(job.prompt),
        "callback": callback,
        "url": prompt_url(base_url, tune_id, job.job_id),
        **_param_values(job),
        "images": images,
        "user_error": user_error(job),
        "trained_at": astria_time(finished) if job.state in TERMINAL else None,
        "started_training_at": astria_time(_started(job)),
        "created_at": astria_time(job.created_at),
        "updated_at": astria_time(job.updated_at),
        # Seen in Astria's answers: the aspect ratio and size the prompt was made at; no packs, orders or
        # image references here.
        "aspect_ratio": job.parsed.params.ar or None,
        "resolution": f"{job.parsed.params.w}x{job.parsed.params.h}" if job.parsed.params.w else None,
        "pack_id": None,
        "order_id": None,
        "image_references": [],
        "status": jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower(),
        "progress": round(float(job.progress), 4),
        "warnings": list(dict.fromkeys([*warnings, *job.warnings])),
    }
    return obj
