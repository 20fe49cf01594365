"""The job state machine: pure transitions of a :class:`JobRecord` (no grpc, nats or minio).

Every transition mutates the record it is given and returns an :class:`Outcome` saying whether anything
changed, which job events to emit and which passes to dispatch. :func:`commit` then numbers the events
(per-job, gap-free), stamps them with the overall progress and writes them, together with the pass
requests, into the record's outbox. Because a transition only reads the record, applying it again to a
fresh copy after a compare-and-set conflict gives the right answer, and a redelivered or late pass
event (same image, pass and attempt) finds its work already done and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from multipass import names
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2
from multipass_gateway.domain import base_batching, person_stages

TERMINAL_PASS = frozenset(
    {
        jobs_pb2.PASS_STATUS_COMPLETED,
        jobs_pb2.PASS_STATUS_FAILED,
        jobs_pb2.PASS_STATUS_CANCELLED,
        jobs_pb2.PASS_STATUS_SKIPPED,
    }
)
ACTIVE_PASS = frozenset({jobs_pb2.PASS_STATUS_QUEUED, jobs_pb2.PASS_STATUS_RUNNING})
#: Pass kinds the gateway runs with Segmentation.Segment on the image before them.
SEGMENT_KINDS = frozenset({"segment", "mask"})
TERMINAL_IMAGE = frozenset(
    {jobs_pb2.PASS_STATUS_COMPLETED, jobs_pb2.PASS_STATUS_FAILED, jobs_pb2.PASS_STATUS_CANCELLED}
)
TERMINAL_JOB = frozenset(
    {
        jobs_pb2.JOB_STATE_SUCCEEDED,
        jobs_pb2.JOB_STATE_FAILED,
        jobs_pb2.JOB_STATE_PARTIAL,
        jobs_pb2.JOB_STATE_CANCELLED,
    }
)
#: Worker failures worth another attempt of the pass (a fresh request, attempt + 1).
RETRIABLE_CODES = frozenset(
    {
        common_pb2.ERROR_CODE_UNAVAILABLE,
        common_pb2.ERROR_CODE_DEADLINE_EXCEEDED,
        common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
    }
)
#: Step progress is recorded (and emitted) about this many times per pass.
PROGRESS_UPDATES_PER_PASS = 10


@dataclass
class Outcome:
    """What one transition did."""

    changed: bool = False
    #: JobEvents to emit (sequence, time and progress are set by :func:`commit`).
    events: list[jobs_pb2.JobEvent] = field(default_factory=list)
    #: (image index, pass index) of passes to publish.
    dispatch: list[tuple[int, int]] = field(default_factory=list)
    #: The job reached a terminal state in this transition.
    finished: bool = False
    #: Why nothing changed (duplicate, stale attempt, ...), for the logs.
    note: str = ""
    #: Members riding in the request of a dispatched pass (base batching at start), by the lead.
    batches: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)


def is_terminal(record: events_pb2.JobRecord) -> bool:
    return record.job.state in TERMINAL_JOB


def _stamp(timestamp, now: datetime) -> None:
    timestamp.FromDatetime(now)


def find_pass(record: events_pb2.JobRecord, image_index: int, pass_name: str) -> int | None:
    if not 0 <= image_index < len(record.job.images):
        return None
    for index, state in enumerate(record.job.images[image_index].passes):
        if state.name == pass_name:
            return index
    return None


# --- progress ---------------------------------------------------------------------------------------


#: Pass states whose work is all done (a skipped pass has none left to do).
DONE_PASS = frozenset({jobs_pb2.PASS_STATUS_COMPLETED, jobs_pb2.PASS_STATUS_SKIPPED})


def pass_fraction(state: jobs_pb2.PassState) -> float:
    """How much of one pass's work was done: all of it once completed; the steps it reached while it ran
    (also when it was then cancelled or failed); none for a pass that never ran."""
    if state.status in DONE_PASS:
        return 1.0
    if state.steps_total > 0:
        return min(1.0, max(0.0, state.steps_done / state.steps_total))
    return 0.0


def progress(record: events_pb2.JobRecord) -> float:
    """Overall progress 0..1: every pass of every image weighted by its planned steps.

    1.0 exactly when the job SUCCEEDED; a job that ended otherwise (cancelled, failed, partial) keeps
    the progress it reached, so a client can tell how far it got.
    """
    if record.job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        return 1.0
    total = done = 0.0
    for image, plan in zip(record.job.images, record.plans, strict=True):
        for state, planned in zip(image.passes, plan.passes, strict=True):
            weight = max(1, planned.weight)
            total += weight
            done += weight * pass_fraction(state)
    return done / total if total else 0.0


def remaining_passes(record: events_pb2.JobRecord) -> int:
    return sum(
        1 for image in record.job.images for state in image.passes if state.status not in TERMINAL_PASS
    )


# --- the chain ----------------------------------------------------------------------------------------


def current_image(record: events_pb2.JobRecord, image_index: int, before: int) -> common_pb2.ImageRef | None:
    """The image pass ``before`` works on: the latest output in the chain before it (the input for the first)."""
    passes = record.job.images[image_index].passes
    for index in range(before - 1, -1, -1):
        if passes[index].status == jobs_pb2.PASS_STATUS_COMPLETED and passes[index].output.key:
            return passes[index].output
    return record.input_image if record.input_image.key else None


def build_request(
    record: events_pb2.JobRecord, image_index: int, pass_index: int, *, with_next: bool = True
) -> events_pb2.OutboxRequest:
    """The pass request of pass ``pass_index`` of image ``image_index``, with the chain's images filled in,
    and (``with_next``) the request of the pass that will follow it on its output (``next_pass``)."""
    job = record.job
    image = job.images[image_index]
    state = image.passes[pass_index]
    planned = record.plans[image_index].passes[pass_index]
    spec = diffusion_pb2.PassSpec()
    spec.CopyFrom(planned.spec)
    # A pass of a parallel stage works on the stage's input, not on the latest output before it.
    position = person_stages.input_position(record.plans[image_index], pass_index)
    current = current_image(record, image_index, position)
    if current is not None and not (planned.kind == "base" and spec.image.key):
        spec.image.CopyFrom(current)
    if planned.kind == "base":
        if "prompt" in image.masks:
            spec.mask.CopyFrom(image.masks["prompt"])
        elif record.mask_image.key:
            spec.mask.CopyFrom(record.mask_image)
    elif planned.kind == "person":
        mask = image.masks.get(f"person-{planned.person_index}")
        if mask is not None:
            spec.mask.CopyFrom(mask)
    elif planned.kind == person_stages.COMPOSITE_KIND:
        spec.layers.extend(person_stages.composite_layers(record, image_index, pass_index))
    in_diffusion = planned.runs_in == "diffusion" and not planned.needs_faces
    subject = names.diffusion_pass_subject(spec.model) if in_diffusion else names.GATEWAY_PASS_SUBJECT
    request = diffusion_pb2.PassRequest(
        job_id=job.job_id,
        tenant=record.tenant,
        image_index=image_index,
        pass_name=state.name,
        attempt=state.attempt,
        spec=spec,
        output_bucket=names.BUCKET_JOBS,
        output_key=names.pass_output_key(record.tenant, job.job_id, image_index, state.name),
        copy_output=in_diffusion and _segmented_next(record.plans[image_index], pass_index),
    )
    following = _next_on_output(record, image_index, pass_index) if with_next and in_diffusion else None
    if following is not None:
        after = build_request(record, image_index, following, with_next=False).request
        after.attempt = 1  # what queueing it after this pass gives it
        after.spec.ClearField("image")  # this pass's output, known once it is stored
        request.next_pass.CopyFrom(after)
    return events_pb2.OutboxRequest(
        subject=subject,
        msg_id=names.pass_msg_id(job.job_id, image_index, state.name, state.attempt),
        request=request,
    )


def _next_on_output(record: events_pb2.JobRecord, image_index: int, pass_index: int) -> int | None:
    """The pass that will be queued when pass ``pass_index`` completes and works on its output on the same
    kind of worker: the next pass of a sequential chain, still pending, run by a diffusion worker of the
    same model without a step in the gateway before it (faces). None for anything else."""
    plan = record.plans[image_index]
    following = pass_index + 1
    if following >= len(plan.passes) or person_stages.is_graph(plan):
        return None
    current, after = plan.passes[pass_index], plan.passes[following]
    if after.runs_in != "diffusion" or after.needs_faces or after.spec.model != current.spec.model:
        return None
    if person_stages.input_position(plan, following) != following:
        return None
    if record.job.images[image_index].passes[following].status != jobs_pb2.PASS_STATUS_PENDING:
        return None
    return following


def _segmented_next(plan: events_pb2.ImagePlan, pass_index: int) -> bool:
    """Whether the pass after ``pass_index`` segments its output in the gateway (``segment``, ``mask``)."""
    following = pass_index + 1
    if following >= len(plan.passes):
        return False
    after = plan.passes[following]
    return after.kind in SEGMENT_KINDS and person_stages.input_position(plan, following) == following


def _queue(state: jobs_pb2.PassState, attempt: int) -> None:
    state.status = jobs_pb2.PASS_STATUS_QUEUED
    state.attempt = attempt
    state.steps_done = 0
    state.ClearField("started_at")
    state.ClearField("finished_at")
    state.ClearField("error")


def _advance(
    record: events_pb2.JobRecord, image_index: int, after: int, now: datetime, outcome: Outcome
) -> None:
    """Queue the next pending pass of the chain after ``after``; complete the image when none is left."""
    image = record.job.images[image_index]
    if person_stages.is_graph(record.plans[image_index]):
        # Parallel persons: queue every pass whose dependencies are done; complete when none is left.
        ready = person_stages.ready_passes(record.plans[image_index], image.passes)
        for index in ready:
            _queue(image.passes[index], 1)
            outcome.dispatch.append((image_index, index))
            image.status = jobs_pb2.PASS_STATUS_RUNNING
        if ready or any(state.status not in TERMINAL_PASS for state in image.passes):
            return
    else:
        for index in range(after + 1, len(image.passes)):
            state = image.passes[index]
            if state.status == jobs_pb2.PASS_STATUS_PENDING:
                _queue(state, 1)
                outcome.dispatch.append((image_index, index))
                image.status = jobs_pb2.PASS_STATUS_RUNNING
                return
    image.status = jobs_pb2.PASS_STATUS_COMPLETED
    final = current_image(record, image_index, len(image.passes))
    if final is not None:
        image.final.CopyFrom(final)
    _finish_if_done(record, now, outcome)


def _finish_if_done(record: events_pb2.JobRecord, now: datetime, outcome: Outcome) -> None:
    job = record.job
    if is_terminal(record) or any(image.status not in TERMINAL_IMAGE for image in job.images):
        return
    done = sum(1 for image in job.images if image.status == jobs_pb2.PASS_STATUS_COMPLETED)
    if done == len(job.images):
        job.state = jobs_pb2.JOB_STATE_SUCCEEDED
        message = f"{done} of {done} images done"
    else:
        job.state = jobs_pb2.JOB_STATE_PARTIAL if done else jobs_pb2.JOB_STATE_FAILED
        failed = [image for image in job.images if image.status == jobs_pb2.PASS_STATUS_FAILED]
        if failed:
            job.error.CopyFrom(failed[0].error)
        message = f"{done} of {len(job.images)} images done"
        if failed:
            message += f"; image {failed[0].index} failed in pass {failed[0].error.pass_name}: {failed[0].error.message}"
    _stamp(job.finished_at, now)
    job.progress = progress(record)
    outcome.finished = True
    outcome.changed = True
    event = jobs_pb2.JobEvent(finished=jobs_pb2.JobFinished(state=job.state, message=message))
    if job.HasField("error"):
        event.finished.error.CopyFrom(job.error)
    outcome.events.append(event)


def _fail_chain(
    record: events_pb2.JobRecord,
    image_index: int,
    pass_index: int,
    error: common_pb2.ErrorDetail,
    now: datetime,
) -> None:
    image = record.job.images[image_index]
    state = image.passes[pass_index]
    state.status = jobs_pb2.PASS_STATUS_FAILED
    state.error.CopyFrom(error)
    _stamp(state.finished_at, now)
    # Every other unfinished pass: the later ones and, in a parallel stage, the persons beside this one.
    for later in image.passes:
        if later.status not in TERMINAL_PASS:
            later.status = jobs_pb2.PASS_STATUS_CANCELLED
    image.status = jobs_pb2.PASS_STATUS_FAILED
    image.error.CopyFrom(error)


# --- transitions ----------------------------------------------------------------------------------------


def _done_at_submit(image_index: int, state: jobs_pb2.PassState) -> list[jobs_pb2.JobEvent]:
    """The events of a pass done while the job was submitted (``prepare``): every pass GetJob lists as
    completed is started and completed in the job's events too."""
    completed = jobs_pb2.JobPassCompleted(image_index=image_index, pass_name=state.name)
    if state.output.key:
        completed.output.CopyFrom(state.output)
    return [
        jobs_pb2.JobEvent(
            pass_started=jobs_pb2.JobPassStarted(
                image_index=image_index, pass_name=state.name, attempt=state.attempt
            )
        ),
        jobs_pb2.JobEvent(pass_completed=completed),
    ]


def start(record: events_pb2.JobRecord, now: datetime, *, max_batch: int = 1) -> Outcome:
    """A new job: emit ``accepted``, complete the prepare passes (done at submit, each with its started and
    completed events), queue each chain's first pass.

    First base passes equal but for their seed go as one batched request of at most ``max_batch``
    images (:mod:`multipass_gateway.domain.base_batching`).
    """
    outcome = Outcome(changed=True)
    job = record.job
    job.state = jobs_pb2.JOB_STATE_QUEUED
    outcome.events.append(
        jobs_pb2.JobEvent(
            accepted=jobs_pb2.JobAccepted(num_images=len(job.images), num_persons=len(job.persons))
        )
    )
    for image_index, image in enumerate(job.images):
        image.status = jobs_pb2.PASS_STATUS_QUEUED
        last_done = -1
        for index, state in enumerate(image.passes):
            if (
                record.plans[image_index].passes[index].runs_in == "gateway"
                and state.status == jobs_pb2.PASS_STATUS_PENDING
            ):
                state.status = jobs_pb2.PASS_STATUS_COMPLETED
                state.attempt = 1
                if not state.HasField("started_at"):
                    _stamp(state.started_at, now)
                _stamp(state.finished_at, now)
                outcome.events.extend(_done_at_submit(image_index, state))
                last_done = index
            elif state.status in TERMINAL_PASS:
                last_done = index
            else:
                break
        _advance(record, image_index, last_done, now, outcome)
        if image.status == jobs_pb2.PASS_STATUS_RUNNING:
            image.status = jobs_pb2.PASS_STATUS_QUEUED
    outcome.dispatch, outcome.batches = base_batching.batch_first_passes(
        record, outcome.dispatch, build_request, max_batch
    )
    return outcome


def _mark_running(
    record: events_pb2.JobRecord,
    state: jobs_pb2.PassState,
    image_index: int,
    now: datetime,
    outcome: Outcome,
    steps_total: int,
) -> None:
    state.status = jobs_pb2.PASS_STATUS_RUNNING
    _stamp(state.started_at, now)
    if steps_total > 0:
        state.steps_total = steps_total
    record.job.images[image_index].status = jobs_pb2.PASS_STATUS_RUNNING
    if record.job.state == jobs_pb2.JOB_STATE_QUEUED:
        record.job.state = jobs_pb2.JOB_STATE_RUNNING
    outcome.changed = True
    outcome.events.append(
        jobs_pb2.JobEvent(
            pass_started=jobs_pb2.JobPassStarted(
                image_index=image_index, pass_name=state.name, attempt=state.attempt
            )
        )
    )


def progress_step_due(steps_done: int, step: int, steps_total: int) -> bool:
    """Step progress is throttled: recorded at the last step and every ~1/10 of the steps."""
    if step <= steps_done:
        return False
    if steps_total <= 0 or step >= steps_total:
        return True
    return step - steps_done >= max(1, math.ceil(steps_total / PROGRESS_UPDATES_PER_PASS))


def apply_event(
    record: events_pb2.JobRecord, event: events_pb2.PassEvent, now: datetime, *, max_attempts: int = 2
) -> Outcome:
    """Apply one pass event (idempotent on (image, pass, attempt))."""
    outcome = Outcome()
    if is_terminal(record):
        outcome.note = f"job already {jobs_pb2.JobState.Name(record.job.state)}"
        return outcome
    index = find_pass(record, event.image_index, event.pass_name)
    if index is None:
        outcome.note = f"no pass {event.pass_name!r} in image {event.image_index}"
        return outcome
    image = record.job.images[event.image_index]
    state = image.passes[index]
    planned = record.plans[event.image_index].passes[index]
    if event.attempt != state.attempt:
        outcome.note = f"stale attempt {event.attempt} (current {state.attempt})"
        return outcome
    if state.status not in ACTIVE_PASS:
        outcome.note = f"pass already {jobs_pb2.PassStatus.Name(state.status).removeprefix('PASS_STATUS_')}"
        return outcome
    kind = event.WhichOneof("event")

    if kind == "started":
        if state.status == jobs_pb2.PASS_STATUS_QUEUED:
            _mark_running(record, state, event.image_index, now, outcome, event.started.steps_total)
        else:
            outcome.note = "already running (redelivered pass)"
        return outcome

    if kind == "progress":
        step, total = event.progress.step, event.progress.steps_total
        if state.status == jobs_pb2.PASS_STATUS_QUEUED:
            _mark_running(record, state, event.image_index, now, outcome, total)
        if total > 0:
            state.steps_total = total
        if progress_step_due(state.steps_done, step, state.steps_total):
            state.steps_done = min(step, state.steps_total) if state.steps_total else step
            outcome.changed = True
            outcome.events.append(
                jobs_pb2.JobEvent(
                    step_progress=jobs_pb2.JobStepProgress(
                        image_index=event.image_index,
                        pass_name=state.name,
                        step=state.steps_done,
                        steps_total=state.steps_total,
                    )
                )
            )
        elif not outcome.changed:
            outcome.note = "progress throttled"
        return outcome

    if kind == "completed":
        result = event.completed.result
        if not state.HasField("started_at"):
            _stamp(state.started_at, now)
        state.status = jobs_pb2.PASS_STATUS_COMPLETED
        _stamp(state.finished_at, now)
        state.cache_hit = result.cache_hit
        if state.steps_total:
            state.steps_done = state.steps_total
        if planned.runs_in == "segmentation":
            output = None  # its result is its masks (below), not an image: the chain goes on with its input
        elif result.output.key:
            output = result.output
        else:  # a pass that hands its input on unchanged
            output = current_image(
                record,
                event.image_index,
                person_stages.input_position(record.plans[event.image_index], index),
            )
        if output is not None:
            state.output.CopyFrom(output)
        completed = jobs_pb2.JobPassCompleted(
            image_index=event.image_index, pass_name=state.name, cache_hit=result.cache_hit
        )
        if output is not None:
            completed.output.CopyFrom(output)
        for mask in event.completed.masks:
            name = "prompt" if planned.kind == "mask" else (mask.label or f"person-{mask.index}")
            image.masks[name].CopyFrom(mask.mask)
            completed.masks[name].CopyFrom(mask.mask)
            if planned.kind == "segment" and 0 <= mask.index < len(record.job.persons):
                person = record.job.persons[mask.index]
                person.masks[event.image_index].CopyFrom(mask.mask)
                person.fallback_mask = person.fallback_mask or mask.fallback
        if planned.kind == "segment":
            person_stages.regroup(record, event.image_index, event.completed.masks)
        for warning in result.warnings:
            text = f"image {event.image_index} {state.name}: {warning}"
            if text not in record.job.warnings:
                record.job.warnings.append(text)
        outcome.changed = True
        outcome.events.append(jobs_pb2.JobEvent(pass_completed=completed))
        if record.job.state == jobs_pb2.JOB_STATE_QUEUED:
            record.job.state = jobs_pb2.JOB_STATE_RUNNING
        _advance(record, event.image_index, index, now, outcome)
        return outcome

    if kind == "failed":
        if event.failed.retriable:
            outcome.note = "worker will retry (retriable failure)"
            return outcome
        # A batch given up on as a whole is reported for its lead: its waiting members fail with it.
        riders = base_batching.members_riding_with(record, event.image_index, state.name)
        _fail_attempt(record, event.image_index, index, event.failed.error, now, outcome, max_attempts)
        for image_index, pass_index in riders:
            rider = record.job.images[image_index].passes[pass_index]
            if rider.status in ACTIVE_PASS and rider.attempt == 1:
                _fail_attempt(record, image_index, pass_index, event.failed.error, now, outcome, max_attempts)
        _finish_if_done(record, now, outcome)
        return outcome

    outcome.note = "event without payload"
    return outcome


def _fail_attempt(
    record: events_pb2.JobRecord,
    image_index: int,
    index: int,
    failure: common_pb2.ErrorDetail,
    now: datetime,
    outcome: Outcome,
    max_attempts: int,
) -> None:
    """One failed attempt: queue the next attempt (alone) for a transient error, else fail the chain."""
    state = record.job.images[image_index].passes[index]
    record.plans[image_index].passes[index].ClearField("batched_with")
    error = common_pb2.ErrorDetail()
    error.CopyFrom(failure)
    error.pass_name = state.name
    if not error.code:
        error.code = common_pb2.ERROR_CODE_INTERNAL
    outcome.changed = True
    if error.code in RETRIABLE_CODES and state.attempt < max_attempts:
        record.job.warnings.append(
            f"image {image_index} {state.name}: attempt {state.attempt} failed ({error.message}); retrying"
        )
        _queue(state, state.attempt + 1)
        outcome.dispatch.append((image_index, index))
        return
    _fail_chain(record, image_index, index, error, now)
    outcome.events.append(
        jobs_pb2.JobEvent(
            pass_failed=jobs_pb2.JobPassFailed(image_index=image_index, pass_name=state.name, error=error)
        )
    )


def cancel(record: events_pb2.JobRecord, now: datetime) -> Outcome:
    """Cancel every queued, running and pending pass; the job ends CANCELLED. No-op on a finished job."""
    outcome = Outcome()
    job = record.job
    if is_terminal(record):
        outcome.note = f"job already ended {jobs_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_')}"
        return outcome
    error = common_pb2.ErrorDetail(code=common_pb2.ERROR_CODE_CANCELLED, message="cancelled by its owner")
    for image in job.images:
        if image.status in TERMINAL_IMAGE:
            continue
        for state in image.passes:
            if state.status not in TERMINAL_PASS:
                if state.status == jobs_pb2.PASS_STATUS_RUNNING:
                    _stamp(state.finished_at, now)
                state.status = jobs_pb2.PASS_STATUS_CANCELLED
        image.status = jobs_pb2.PASS_STATUS_CANCELLED
        image.error.CopyFrom(error)
    job.state = jobs_pb2.JOB_STATE_CANCELLED
    job.error.CopyFrom(error)
    _stamp(job.finished_at, now)
    job.progress = progress(record)
    outcome.changed = True
    outcome.finished = True
    outcome.events.append(
        jobs_pb2.JobEvent(
            finished=jobs_pb2.JobFinished(state=job.state, error=error, message="cancelled by its owner")
        )
    )
    return outcome


# --- commit ---------------------------------------------------------------------------------------------


def commit(record: events_pb2.JobRecord, outcome: Outcome, now: datetime) -> list[jobs_pb2.JobEvent]:
    """Number the outcome's events, put them and its pass requests into the outbox; returns the events."""
    job = record.job
    _stamp(job.updated_at, now)
    job.progress = progress(record)
    numbered = []
    for event in outcome.events:
        job.last_sequence += 1
        event.sequence = job.last_sequence
        event.job_id = job.job_id
        _stamp(event.time, now)
        event.progress = job.progress
        record.outbox_events.append(event)
        numbered.append(event)
    for image_index, pass_index in outcome.dispatch:
        request = build_request(record, image_index, pass_index)
        members = outcome.batches.get((image_index, pass_index), ())
        base_batching.attach_members(
            request.request, [build_request(record, *member).request for member in members]
        )
        record.outbox_requests.append(request)
    return numbered


def clear_outbox(
    record: events_pb2.JobRecord, published_events: int, published_requests: Iterable[str]
) -> bool:
    """Drop published entries: events up to sequence ``published_events`` and requests by msg id.

    Returns whether the record changed.
    """
    changed = False
    keep = [event for event in record.outbox_events if event.sequence > published_events]
    if len(keep) != len(record.outbox_events):
        del record.outbox_events[:]
        record.outbox_events.extend(keep)
        changed = True
    published = set(published_requests)
    remaining = [entry for entry in record.outbox_requests if entry.msg_id not in published]
    if len(remaining) != len(record.outbox_requests):
        del record.outbox_requests[:]
        record.outbox_requests.extend(remaining)
        changed = True
    return changed
