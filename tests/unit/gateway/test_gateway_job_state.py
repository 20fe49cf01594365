"""The job state machine: transitions, idempotency, failures, cancel, progress and the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest
from gateway_helpers import T0, event, image_ref, parsed_prompt, record_for, started

from multipass.v1 import common_pb2, jobs_pb2, segmentation_pb2
from multipass_gateway.domain import job_state


def apply(record, message, *, max_attempts=2, seconds=1):
    outcome = job_state.apply_event(
        record, message, T0 + timedelta(seconds=seconds), max_attempts=max_attempts
    )
    if outcome.changed:
        job_state.commit(record, outcome, T0 + timedelta(seconds=seconds))
    return outcome


def statuses(record, image=0):
    return {
        p.name: jobs_pb2.PassStatus.Name(p.status).removeprefix("PASS_STATUS_")
        for p in record.job.images[image].passes
    }


def person_masks(record, count, image=0):
    return [
        segmentation_pb2.MaskResult(
            index=i,
            label=f"person-{i}",
            mask=image_ref(f"jobs/{record.tenant}/{record.job.job_id}/image-{image}/mask-person-{i}.png"),
            fallback=i == 1,
        )
        for i in range(count)
    ]


def run_pass(record, image, name, **completed):
    apply(record, event(record, image, name, "started", steps_total=30))
    return apply(record, event(record, image, name, "completed", **completed))


def test_start_queues_first_pass_and_emits_accepted():
    record = started(record_for(parsed_prompt(1, num_images=2)))
    assert record.job.state == jobs_pb2.JOB_STATE_QUEUED
    for image in range(2):
        assert statuses(record, image) == {
            "prepare": "COMPLETED",
            "base": "QUEUED",
            "segment": "PENDING",
            "person-0": "PENDING",
        }
    accepted, *prepared = record.outbox_events
    assert accepted.sequence == 1 and accepted.accepted.num_images == 2 and accepted.accepted.num_persons == 1
    # The prepare passes (done at submit) are started and completed in the events as GetJob shows them.
    assert [(e.WhichOneof("event"), getattr(e, e.WhichOneof("event")).image_index) for e in prepared] == [
        ("pass_started", 0),
        ("pass_completed", 0),
        ("pass_started", 1),
        ("pass_completed", 1),
    ]
    assert all(getattr(e, e.WhichOneof("event")).pass_name == "prepare" for e in prepared)
    assert [
        (r.request.image_index, r.request.pass_name, r.request.attempt) for r in record.outbox_requests
    ] == [
        (0, "base", 1),
        (1, "base", 1),
    ]
    request = record.outbox_requests[0]
    assert request.subject == "multipass.pass.diffusion.tiny-sd15"
    # The segment pass after the base reads its output in the gateway: the worker is asked for a copy.
    assert request.request.copy_output
    assert request.msg_id == f"{record.job.job_id}:0:base:1"
    assert request.request.output_key == f"jobs/{record.tenant}/{record.job.job_id}/image-0/base.png"
    assert record.job.last_sequence == 5


def test_full_chain_reaches_succeeded_with_every_pass_recorded():
    record = started(record_for(parsed_prompt(2)))
    run_pass(record, 0, "base")
    assert statuses(record)["segment"] == "QUEUED"
    segment_request = record.outbox_requests[-1]
    assert segment_request.subject == "multipass.pass.gateway"
    assert segment_request.request.spec.image.key.endswith("image-0/base.png")
    run_pass(
        record, 0, "segment", output=record.job.images[0].passes[1].output, masks=person_masks(record, 2)
    )
    assert set(record.job.images[0].masks) == {"person-0", "person-1"}
    # The segment pass's result is its masks: no output image of its own (not the base image again).
    assert not record.job.images[0].passes[2].output.key
    (segmented,) = [
        e.pass_completed
        for e in record.outbox_events
        if e.WhichOneof("event") == "pass_completed" and e.pass_completed.pass_name == "segment"
    ]
    assert not segmented.output.key and set(segmented.masks) == {"person-0", "person-1"}
    assert (
        record.job.persons[1].masks[0].key.endswith("mask-person-1.png")
        and record.job.persons[1].fallback_mask
    )
    assert not segment_request.request.copy_output  # the gateway's own pass
    person_request = record.outbox_requests[-1].request
    assert person_request.pass_name == "person-0"
    assert not person_request.copy_output  # a diffusion pass reads it next
    assert person_request.spec.mask.key.endswith("mask-person-0.png")
    assert person_request.spec.image.key.endswith("image-0/base.png")
    run_pass(record, 0, "person-0")
    second = record.outbox_requests[-1].request
    assert second.pass_name == "person-1" and second.spec.image.key.endswith("image-0/person-0.png")
    outcome = run_pass(record, 0, "person-1")
    assert outcome.finished
    assert record.job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert record.job.progress == 1.0
    image = record.job.images[0]
    assert image.status == jobs_pb2.PASS_STATUS_COMPLETED
    assert image.final.key.endswith("image-0/person-1.png")
    assert all(p.status == jobs_pb2.PASS_STATUS_COMPLETED and p.HasField("finished_at") for p in image.passes)
    kinds = [e.WhichOneof("event") for e in record.outbox_events]
    assert kinds[0] == "accepted" and kinds[-1] == "finished"
    assert [e.sequence for e in record.outbox_events] == list(range(1, len(kinds) + 1))
    assert record.outbox_events[-1].finished.state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_duplicate_and_late_events_do_not_double_advance():
    record = started(record_for(parsed_prompt(1)))
    run_pass(record, 0, "base")
    before = record.SerializeToString()
    duplicate = apply(record, event(record, 0, "base", "completed"))
    assert not duplicate.changed and "already COMPLETED" in duplicate.note
    late_progress = apply(record, event(record, 0, "base", "progress", step=10, steps_total=30))
    late_start = apply(record, event(record, 0, "base", "started"))
    assert not late_progress.changed and not late_start.changed
    assert record.SerializeToString() == before


def test_stale_attempt_is_ignored():
    record = started(record_for(parsed_prompt(0)))
    outcome = apply(record, event(record, 0, "base", "completed", attempt=7))
    assert not outcome.changed and "stale attempt" in outcome.note
    assert statuses(record)["base"] == "QUEUED"


def test_unknown_pass_or_image_changes_nothing():
    record = started(record_for(parsed_prompt(0)))
    assert not job_state.apply_event(record, event(record, 0, "hires", "completed", attempt=1), T0).changed
    assert not job_state.apply_event(record, event(record, 5, "base", "completed", attempt=1), T0).changed


def test_completed_before_started_still_completes():
    record = started(record_for(parsed_prompt(0)))
    outcome = apply(record, event(record, 0, "base", "completed"))
    assert outcome.finished and record.job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert record.job.images[0].passes[1].HasField("started_at")


def test_failed_pass_fails_the_chain_and_names_the_pass():
    record = started(record_for(parsed_prompt(2)))
    run_pass(record, 0, "base")
    outcome = apply(record, event(record, 0, "segment", "failed", message="image is 0x0 pixels"))
    assert outcome.finished
    assert record.job.state == jobs_pb2.JOB_STATE_FAILED
    assert record.job.error.pass_name == "segment"
    assert record.job.error.message == "image is 0x0 pixels"
    assert statuses(record) == {
        "prepare": "COMPLETED",
        "base": "COMPLETED",
        "segment": "FAILED",
        "person-0": "CANCELLED",
        "person-1": "CANCELLED",
    }
    kinds = [e.WhichOneof("event") for e in record.outbox_events]
    assert kinds[-2:] == ["pass_failed", "finished"]
    assert "failed in pass segment" in record.outbox_events[-1].finished.message


def test_one_image_failing_of_two_is_partial():
    record = started(record_for(parsed_prompt(0, num_images=2)))
    apply(record, event(record, 1, "base", "failed"))
    assert not job_state.is_terminal(record) and record.job.images[1].status == jobs_pb2.PASS_STATUS_FAILED
    outcome = apply(record, event(record, 0, "base", "completed"))
    assert outcome.finished and record.job.state == jobs_pb2.JOB_STATE_PARTIAL
    assert record.job.error.pass_name == "base"


def test_retriable_worker_failure_is_left_to_redelivery():
    record = started(record_for(parsed_prompt(0)))
    outcome = apply(record, event(record, 0, "base", "failed", retriable=True))
    assert not outcome.changed and statuses(record)["base"] == "QUEUED"


def test_unavailable_failure_is_retried_with_a_new_attempt_then_fails():
    record = started(record_for(parsed_prompt(0)))
    outcome = apply(record, event(record, 0, "base", "failed", code=common_pb2.ERROR_CODE_UNAVAILABLE))
    assert outcome.dispatch == [(0, 1)] and not outcome.finished
    assert record.job.images[0].passes[1].attempt == 2
    assert record.outbox_requests[-1].msg_id.endswith(":0:base:2")
    assert any("retrying" in w for w in record.job.warnings)
    # The old attempt's completion is stale now.
    assert not apply(record, event(record, 0, "base", "completed", attempt=1)).changed
    final = apply(record, event(record, 0, "base", "failed", code=common_pb2.ERROR_CODE_UNAVAILABLE))
    assert final.finished and record.job.state == jobs_pb2.JOB_STATE_FAILED


def test_cancel_stops_queued_and_running_and_is_a_noop_afterwards():
    record = started(record_for(parsed_prompt(1, num_images=2)))
    apply(record, event(record, 0, "base", "started"))
    outcome = job_state.cancel(record, T0)
    assert outcome.finished
    assert record.job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert statuses(record, 0) == {
        "prepare": "COMPLETED",
        "base": "CANCELLED",
        "segment": "CANCELLED",
        "person-0": "CANCELLED",
    }
    again = job_state.cancel(record, T0)
    assert not again.changed and "already ended CANCELLED" in again.note
    # A worker finishing after the cancel changes nothing.
    assert not job_state.apply_event(record, event(record, 0, "base", "completed"), T0).changed


def test_a_cancelled_or_failed_job_reports_the_progress_it_reached():
    record = started(record_for(parsed_prompt(0, num_images=2)))
    total = sum(p.weight for plan in record.plans for p in plan.passes)  # prepare 1 + base 30, twice
    apply(record, event(record, 0, "base", "started", steps_total=30))
    apply(record, event(record, 0, "base", "progress", step=15, steps_total=30))
    reached = job_state.progress(record)
    assert reached == pytest.approx((2 + 15) / total)
    outcome = job_state.cancel(record, T0)
    job_state.commit(record, outcome, T0)
    assert record.job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert record.job.progress == pytest.approx(reached) and reached < 1.0
    assert record.outbox_events[-1].finished.state == jobs_pb2.JOB_STATE_CANCELLED
    assert record.outbox_events[-1].progress == pytest.approx(reached)

    failed = started(record_for(parsed_prompt(0, num_images=2)))
    run = apply(failed, event(failed, 0, "base", "completed"))
    assert not run.finished
    apply(failed, event(failed, 1, "base", "started", steps_total=30))
    apply(failed, event(failed, 1, "base", "progress", step=3, steps_total=30))
    ended = apply(failed, event(failed, 1, "base", "failed", code=common_pb2.ERROR_CODE_INVALID_ARGUMENT))
    assert ended.finished and failed.job.state == jobs_pb2.JOB_STATE_PARTIAL
    assert failed.job.progress == pytest.approx((2 + 30 + 3) / total)
    assert failed.outbox_events[-1].progress == pytest.approx(failed.job.progress)


def test_cancel_of_a_finished_job_says_so():
    record = started(record_for(parsed_prompt(0)))
    apply(record, event(record, 0, "base", "completed"))
    outcome = job_state.cancel(record, T0)
    assert not outcome.changed and outcome.note == "job already ended SUCCEEDED"


def test_progress_is_weighted_by_steps_and_throttled():
    record = started(record_for(parsed_prompt(1)))
    weights = [p.weight for p in record.plans[0].passes]
    total = sum(weights)
    assert job_state.progress(record) == pytest.approx(weights[0] / total)
    apply(record, event(record, 0, "base", "started", steps_total=30))
    emitted = []
    for step in range(1, 31):
        outcome = apply(record, event(record, 0, "base", "progress", step=step, steps_total=30))
        if outcome.events:
            emitted.append(outcome.events[-1].step_progress.step)
    assert emitted == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert job_state.progress(record) == pytest.approx((weights[0] + weights[1]) / total)
    last = record.outbox_events[-1]
    assert last.step_progress.step == 30 and last.progress == pytest.approx(job_state.progress(record))


def test_progress_of_a_running_pass_counts_its_steps():
    record = started(record_for(parsed_prompt(0)))
    apply(record, event(record, 0, "base", "progress", step=15, steps_total=30))
    assert statuses(record)["base"] == "RUNNING"
    assert job_state.progress(record) == pytest.approx((1 + 0.5 * 30) / 31)


@pytest.mark.parametrize(
    ("done", "step", "total", "due"),
    [
        (0, 1, 30, False),
        (0, 3, 30, True),
        (3, 5, 30, False),
        (3, 6, 30, True),
        (27, 30, 30, True),
        (30, 30, 30, False),
        (0, 1, 4, True),
        (0, 1, 0, True),
    ],
)
def test_progress_throttle(done, step, total, due):
    assert job_state.progress_step_due(done, step, total) is due


def test_outbox_is_cleared_by_published_ids():
    record = started(record_for(parsed_prompt(0, num_images=2)))
    ids = [r.msg_id for r in record.outbox_requests]
    assert job_state.clear_outbox(record, 3, [ids[0]])
    assert [e.sequence for e in record.outbox_events] == [4, 5]
    assert [r.msg_id for r in record.outbox_requests] == ids[1:]
    assert not job_state.clear_outbox(record, 3, [])
    assert job_state.clear_outbox(record, 5, [])
    assert not record.outbox_events


def test_keep_background_segments_the_input_image():
    from multipass_gateway.domain import planner

    parsed = parsed_prompt(1, base="", common="", keep_background=True)
    source = image_ref("jobs/t/j/inputs/input.png", 640, 480)
    inputs = planner.JobInputs(seed=1, width=640, height=480, input_image=source)
    record = started(record_for(parsed, inputs=inputs))
    (request,) = record.outbox_requests
    assert request.request.pass_name == "segment" and request.request.spec.image.key == source.key


def test_base_inpaint_gets_the_prompt_mask():
    from multipass_gateway.domain import planner

    parsed = parsed_prompt(0, mask_prompt="windows")
    source = image_ref("jobs/t/j/inputs/input.png")
    record = started(
        record_for(parsed, inputs=planner.JobInputs(seed=1, width=512, height=512, input_image=source))
    )
    assert record.outbox_requests[-1].request.pass_name == "mask"
    mask = segmentation_pb2.MaskResult(
        index=0, label="mask", mask=image_ref("jobs/t/j/image-0/mask-mask.png")
    )
    run_pass(record, 0, "mask", output=source, masks=[mask])
    base = record.outbox_requests[-1].request
    assert base.pass_name == "base"
    assert base.spec.mask.key == "jobs/t/j/image-0/mask-mask.png"
    assert base.spec.image.key == source.key
    assert record.job.images[0].masks["prompt"].key.endswith("mask-mask.png")


def test_a_person_pass_names_the_next_one_as_it_will_be_requested_on_its_output():
    record = started(record_for(parsed_prompt(2)))
    assert not record.outbox_requests[-1].request.HasField("next_pass")  # the base: a segment pass follows
    run_pass(record, 0, "base")
    assert not record.outbox_requests[-1].request.HasField("next_pass")  # the gateway's own segment pass
    run_pass(
        record, 0, "segment", output=record.job.images[0].passes[1].output, masks=person_masks(record, 2)
    )
    first = record.outbox_requests[-1].request
    named = first.next_pass
    assert (named.pass_name, named.attempt, named.image_index) == ("person-1", 1, 0)
    assert not named.spec.HasField("image") and not named.HasField("next_pass")
    assert named.spec.mask.key.endswith("mask-person-1.png")
    run_pass(record, 0, "person-0", output=image_ref(first.output_key))
    second = record.outbox_requests[-1].request
    # What the worker runs ahead (the named spec on person-0's output) is exactly what then comes.
    ahead = type(named.spec)()
    ahead.CopyFrom(named.spec)
    ahead.image.CopyFrom(record.job.images[0].passes[3].output)
    assert second.pass_name == "person-1" and second.spec == ahead
    assert (second.output_key, second.attempt) == (named.output_key, named.attempt)
    assert not second.HasField("next_pass")  # the last pass


def test_a_retried_pass_names_its_next_pass_again_and_a_started_one_is_not_named():
    record = started(record_for(parsed_prompt(2)))
    run_pass(record, 0, "base")
    run_pass(
        record, 0, "segment", output=record.job.images[0].passes[1].output, masks=person_masks(record, 2)
    )
    apply(record, event(record, 0, "person-0", "failed", code=common_pb2.ERROR_CODE_UNAVAILABLE))
    retry = record.outbox_requests[-1].request
    assert (retry.pass_name, retry.attempt, retry.next_pass.pass_name) == ("person-0", 2, "person-1")
    record.job.images[0].passes[4].status = jobs_pb2.PASS_STATUS_QUEUED
    index = job_state.find_pass(record, 0, "person-0")
    assert not job_state.build_request(record, 0, index).request.HasField("next_pass")
