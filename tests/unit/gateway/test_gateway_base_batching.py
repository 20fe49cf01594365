"""Base batching: which first base passes of a job go as one request, and how each chain advances alone."""

from __future__ import annotations

from datetime import timedelta

from gateway_helpers import T0, event, image_ref, parsed_prompt, record_for

from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2
from multipass_gateway.domain import base_batching, job_state, planner
from multipass_gateway.settings import GatewaySettings


def started(record, max_batch=4):
    outcome = job_state.start(record, T0, max_batch=max_batch)
    job_state.commit(record, outcome, T0)
    return record


def apply(record, message, *, max_attempts=2):
    outcome = job_state.apply_event(record, message, T0 + timedelta(seconds=1), max_attempts=max_attempts)
    if outcome.changed:
        job_state.commit(record, outcome, T0 + timedelta(seconds=1))
    return outcome


def entry(seed=1, *, kind="base", subject="multipass.pass.diffusion.m", attempt=1, prompt="a garden"):
    return events_pb2.OutboxRequest(
        subject=subject,
        request=diffusion_pb2.PassRequest(
            pass_name=kind,
            attempt=attempt,
            output_bucket="b",
            spec=diffusion_pb2.PassSpec(kind=kind, seed=seed, prompt=prompt, steps=20),
        ),
    )


# -- the pure grouping ---------------------------------------------------------------------------------


def test_specs_equal_but_for_seed_group_up_to_the_bound():
    entries = [entry(seed) for seed in range(10)]
    assert base_batching.group(entries, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert base_batching.group(entries, 1) == [[i] for i in range(10)]


def test_any_other_difference_keeps_requests_apart():
    entries = [
        entry(1),
        entry(2, prompt="a beach"),
        entry(3, subject="multipass.pass.diffusion.other"),
        entry(4, kind="hires"),
        entry(5, attempt=2),
        entry(6),
    ]
    assert base_batching.group(entries, 8) == [[0, 5], [1], [2], [3], [4]]


def test_attach_members_carries_what_differs():
    lead = entry(1).request
    member = entry(2).request
    member.image_index, member.output_key = 3, "jobs/t/j/image-3/base.png"
    base_batching.attach_members(lead, [member])
    (added,) = lead.batch
    assert (added.image_index, added.attempt, added.seed, added.output_key) == (
        3,
        1,
        2,
        "jobs/t/j/image-3/base.png",
    )


def test_max_base_batch_setting_is_read_and_bounded():
    assert GatewaySettings.from_env({}).limits.max_base_batch == base_batching.DEFAULT_MAX_BATCH
    assert GatewaySettings.from_env({"MULTIPASS_GATEWAY_MAX_BASE_BATCH": "8"}).limits.max_base_batch == 8


# -- the job's transitions -----------------------------------------------------------------------------


def test_start_sends_one_request_carrying_the_other_bases():
    record = started(record_for(parsed_prompt(0, num_images=3)))
    (request,) = [entry.request for entry in record.outbox_requests]
    assert (request.image_index, request.pass_name, request.spec.seed) == (0, "base", 100)
    assert [(m.image_index, m.attempt, m.seed) for m in request.batch] == [(1, 1, 101), (2, 1, 102)]
    assert request.batch[1].output_key == f"jobs/{record.tenant}/{record.job.job_id}/image-2/base.png"
    for image in range(3):
        assert record.job.images[image].passes[1].status == jobs_pb2.PASS_STATUS_QUEUED
    assert not record.plans[0].passes[1].HasField("batched_with")
    assert [record.plans[i].passes[1].batched_with for i in (1, 2)] == [0, 0]


def test_bound_splits_the_batch_and_unbatched_start_is_unchanged():
    record = started(record_for(parsed_prompt(0, num_images=5)), max_batch=2)
    assert [
        (e.request.image_index, [m.image_index for m in e.request.batch]) for e in record.outbox_requests
    ] == [(0, [1]), (2, [3]), (4, [])]
    alone = started(record_for(parsed_prompt(0, num_images=3)), max_batch=1)
    assert [(e.request.image_index, len(e.request.batch)) for e in alone.outbox_requests] == [
        (0, 0),
        (1, 0),
        (2, 0),
    ]


def test_bases_after_a_gateway_pass_are_not_batched():
    # A --mask_prompt chain segments each image first: its base passes are dispatched later, one by one.
    inputs = planner.JobInputs(seed=7, width=512, height=512, input_image=image_ref("uploads/in.png"))
    record = started(record_for(parsed_prompt(0, num_images=2, mask_prompt="the sky"), inputs=inputs))
    assert all(not e.request.batch for e in record.outbox_requests)
    assert all(e.request.pass_name == "mask" for e in record.outbox_requests)


def test_each_member_advances_on_its_own_events():
    record = started(record_for(parsed_prompt(1, num_images=3)))
    apply(record, event(record, 1, "base", "started", steps_total=30))
    apply(record, event(record, 1, "base", "progress", step=30, steps_total=30))
    assert record.job.images[1].passes[1].steps_done == 30
    assert record.job.images[0].passes[1].steps_done == 0
    outcome = apply(record, event(record, 1, "base", "completed"))
    assert outcome.dispatch == [(1, 2)]  # image 1's segment pass, alone
    assert record.outbox_requests[-1].request.pass_name == "segment"
    assert not record.outbox_requests[-1].request.batch
    assert record.job.images[0].passes[1].status == jobs_pb2.PASS_STATUS_QUEUED
    assert 0 < job_state.progress(record) < 1


def test_a_member_failing_transiently_is_retried_alone():
    record = started(record_for(parsed_prompt(0, num_images=3)))
    unavailable = common_pb2.ERROR_CODE_UNAVAILABLE
    outcome = apply(record, event(record, 2, "base", "failed", code=unavailable))
    assert outcome.dispatch == [(2, 1)]
    retry = record.outbox_requests[-1].request
    assert (retry.image_index, retry.attempt, len(retry.batch)) == (2, 2, 0)
    assert not record.plans[2].passes[1].HasField("batched_with")
    # The lead failing later retries itself and the member still riding with it, each alone.
    outcome = apply(record, event(record, 0, "base", "failed", code=unavailable))
    assert sorted(outcome.dispatch) == [(0, 1), (1, 1)]
    assert [(e.request.image_index, e.request.attempt, len(e.request.batch)) for e in record.outbox_requests][
        -2:
    ] == [(0, 2, 0), (1, 2, 0)]
    # The worker's own (now stale) event for the member changes nothing.
    assert not apply(record, event(record, 1, "base", "failed", attempt=1, code=unavailable)).changed


def test_a_batch_given_up_on_fails_its_members_with_the_lead():
    record = started(record_for(parsed_prompt(0, num_images=3)))
    apply(record, event(record, 1, "base", "completed"))
    outcome = apply(record, event(record, 0, "base", "failed", code=common_pb2.ERROR_CODE_INTERNAL))
    assert outcome.finished and record.job.state == jobs_pb2.JOB_STATE_PARTIAL
    assert [image.status for image in record.job.images] == [
        jobs_pb2.PASS_STATUS_FAILED,
        jobs_pb2.PASS_STATUS_COMPLETED,
        jobs_pb2.PASS_STATUS_FAILED,
    ]
    failed = [e.pass_failed.image_index for e in outcome.events if e.HasField("pass_failed")]
    assert failed == [0, 2]


def test_cancel_ends_every_image_of_a_batch():
    record = started(record_for(parsed_prompt(0, num_images=3)))
    (entry_,) = record.outbox_requests
    assert job_state.clear_outbox(record, record.job.last_sequence, [entry_.msg_id])
    outcome = job_state.cancel(record, T0)
    assert outcome.finished
    assert all(image.status == jobs_pb2.PASS_STATUS_CANCELLED for image in record.job.images)


def test_img2img_bases_batch_with_the_input_image_filled_in():
    parsed = parsed_prompt(0, num_images=2, explicit=("denoising_strength",))
    inputs = planner.JobInputs(seed=7, width=512, height=512, input_image=image_ref("uploads/in.png"))
    record = started(record_for(parsed, inputs=inputs))
    (request,) = [e.request for e in record.outbox_requests]
    assert request.spec.image.key == "uploads/in.png" and [m.seed for m in request.batch] == [8]
