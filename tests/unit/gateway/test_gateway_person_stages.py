"""Parallel person stages: the grouping rule (pure) and the job state machine running the resulting graph."""

from __future__ import annotations

from datetime import timedelta

from gateway_helpers import T0, config, event, image_ref, parsed_prompt, record_for, started

from multipass.crop_geometry import Box
from multipass.v1 import common_pb2, diffusion_pb2, jobs_pb2, segmentation_pb2
from multipass_gateway.domain import job_state, person_stages

WIDTH, HEIGHT = 1024, 256
#: Two short persons far apart (their crops, twice as wide as tall, stay apart) and one in between.
LEFT = (40, 80, 120, 180)
RIGHT = (880, 80, 960, 180)
MIDDLE = (420, 80, 560, 180)


def person_spec(**fields) -> diffusion_pb2.PassSpec:
    values = dict(kind="person", width=WIDTH, height=HEIGHT, crop_padding=32, crop_factor=1.3, mask_blur=4.0)
    values.update(fields)
    return diffusion_pb2.PassSpec(**values)


def mask(index: int, box, *, width=WIDTH, height=HEIGHT) -> segmentation_pb2.MaskResult:
    x0, y0, x1, y1 = box
    return segmentation_pb2.MaskResult(
        index=index,
        label=f"person-{index}",
        mask=image_ref(f"mask-person-{index}.png", width, height),
        box=common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1),
        area_fraction=(x1 - x0) * (y1 - y0) / (width * height),
    )


# --- the rule ---------------------------------------------------------------------------------------------


def test_footprint_grows_the_mask_box_by_the_feather_and_crops_like_the_worker():
    found = person_stages.footprint(mask(0, LEFT), person_spec(), 64)
    assert found.support == Box(24, 64, 136, 196)  # the box grown by the feather's 16-pixel reach
    # 112x132 box: x1.3 + 2x32 padding = 209.6x235.6, widened to the 2:1 cap (471.2 wide), slid inside.
    assert found.crop == Box(0, 12, 472, 248)
    assert person_stages.footprint(mask(0, LEFT), person_spec(mask_blur=-1), 64).support == Box(*LEFT)


def test_empty_mask_reads_nothing_and_unknown_mask_runs_alone():
    empty = person_stages.footprint(mask(0, (0, 0, 0, 0)), person_spec(), 64)
    assert empty.known and empty.crop is None
    missing_box = mask(0, (0, 0, 0, 0))
    missing_box.area_fraction = 0.2
    assert not person_stages.footprint(missing_box, person_spec(), 64).known
    left = person_stages.footprint(mask(0, LEFT), person_spec(), 64)
    assert person_stages.independent(empty, left)
    assert not person_stages.independent(person_stages.UNKNOWN, left)
    assert not person_stages.footprint(mask(0, LEFT), person_spec(), 0).known


#: Overlaps LEFT's crop, apart from RIGHT.
NEAR_LEFT = (60, 80, 200, 180)


def prints_of(*boxes, working_size=64):
    return [person_stages.footprint(mask(i, box), person_spec(), working_size) for i, box in enumerate(boxes)]


def test_disjoint_persons_share_a_stage_and_overlapping_ones_do_not():
    left, right, middle = prints_of(LEFT, RIGHT, MIDDLE)
    assert person_stages.independent(left, right)
    assert person_stages.stages([left, right]) == [[0, 1]]
    # The middle person's crop meets both neighbours' masks: everything stays in order.
    assert not person_stages.independent(left, middle) and not person_stages.independent(middle, right)
    assert person_stages.stages([left, middle, right]) == [[0], [1], [2]]
    assert person_stages.stages([left, right, middle]) == [[0, 1], [2]]


def test_a_person_moves_ahead_only_of_persons_it_commutes_with():
    left, near, right = prints_of(LEFT, NEAR_LEFT, RIGHT)
    assert not person_stages.independent(left, near)
    assert person_stages.independent(near, right) and person_stages.independent(left, right)
    assert person_stages.stages([left, near, right]) == [[0, 2], [1]]
    assert person_stages.stages([near, left, right]) == [[0, 2], [1]]


def test_more_context_makes_crops_meet():
    wide = person_spec(crop_padding=200)
    prints = [person_stages.footprint(mask(i, box), wide, 64) for i, box in enumerate((LEFT, RIGHT))]
    assert not person_stages.independent(*prints)


def test_parallel_working_size_needs_the_setting_one_family_and_the_composite_kind():
    info = diffusion_pb2.InfoResponse(
        models=["m"], model_family="sd15", working_size=512, capabilities=["pass:person", "pass:composite"]
    )
    assert person_stages.parallel_working_size(info, "m", enabled=True) == 512
    assert person_stages.parallel_working_size(info, "m", enabled=False) == 0
    without = diffusion_pb2.InfoResponse(model_family="sd15", working_size=512, capabilities=["pass:person"])
    assert person_stages.parallel_working_size(without, "m", enabled=True) == 0
    mixed = diffusion_pb2.InfoResponse(model_family="sd15,sdxl", working_size=512)
    assert person_stages.parallel_working_size(mixed, "m", enabled=True) == 0
    unknown = diffusion_pb2.InfoResponse(model_family="sd15", capabilities=["pass:composite"])
    assert person_stages.parallel_working_size(unknown, "m", enabled=True) == 0


# --- the graph in the job state machine -------------------------------------------------------------------


def apply(record, message, *, max_attempts=2, seconds=1):
    now = T0 + timedelta(seconds=seconds)
    outcome = job_state.apply_event(record, message, now, max_attempts=max_attempts)
    if outcome.changed:
        job_state.commit(record, outcome, now)
    return outcome


def statuses(record, image=0):
    return {
        p.name: jobs_pb2.PassStatus.Name(p.status).removeprefix("PASS_STATUS_")
        for p in record.job.images[image].passes
    }


def requests(record):
    return {r.request.pass_name: r.request for r in record.outbox_requests}


def complete(record, name, **fields):
    apply(record, event(record, 0, name, "started", steps_total=10))
    return apply(record, event(record, 0, name, "completed", **fields))


def segmented(persons=(LEFT, RIGHT), working_size=64, **prompt):
    parsed = parsed_prompt(len(persons), w=WIDTH, h=HEIGHT, **prompt)
    record = started(record_for(parsed, cfg=config(parallel_working_size=working_size)))
    complete(record, "base")
    record.outbox_requests.clear()
    outcome = complete(record, "segment", masks=[mask(i, box) for i, box in enumerate(persons)])
    return record, outcome


def test_disjoint_persons_run_together_on_the_segmented_image_then_merge():
    record, outcome = segmented()
    names = [p.name for p in record.job.images[0].passes]
    assert names == ["prepare", "base", "segment", "person-0", "person-1", "composite-0"]
    assert [p.name for p in record.plans[0].passes] == names
    assert statuses(record)["person-0"] == statuses(record)["person-1"] == "QUEUED"
    assert statuses(record)["composite-0"] == "PENDING"
    sent = requests(record)
    base_output = record.job.images[0].passes[1].output  # the segmented image
    assert not record.job.images[0].passes[2].output.key  # the segment pass's result is its masks
    assert sent["person-0"].spec.image == sent["person-1"].spec.image == base_output
    assert sent["person-1"].spec.mask.key.endswith("mask-person-1.png")

    record.outbox_requests.clear()
    complete(record, "person-1")
    assert "composite-0" not in requests(record)  # waits for both persons
    complete(record, "person-0")
    composite = requests(record)["composite-0"]
    assert composite.spec.kind == "composite" and composite.spec.model == "tiny-sd15"
    assert composite.spec.image == base_output
    assert [layer.image.key.rsplit("/", 1)[1] for layer in composite.spec.layers] == [
        "person-0.png",
        "person-1.png",
    ]
    assert [layer.mask.key for layer in composite.spec.layers] == ["mask-person-0.png", "mask-person-1.png"]
    assert all(layer.mask_blur == 4.0 for layer in composite.spec.layers)

    complete(record, "composite-0")
    image = record.job.images[0]
    assert record.job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert image.final.key.endswith("composite-0.png")
    assert job_state.progress(record) == 1.0


def test_the_chain_continues_after_the_composite():
    record, _ = segmented(hires_fix=True)
    complete(record, "person-0")
    complete(record, "person-1")
    record.outbox_requests.clear()
    complete(record, "composite-0")
    hires = requests(record)["hires"]
    assert hires.spec.image.key.endswith("composite-0.png")
    assert statuses(record)["hires"] == "QUEUED"


def test_progress_counts_parallel_passes_and_redelivered_events_change_nothing():
    record, _ = segmented()
    before = job_state.progress(record)
    complete(record, "person-0")
    assert job_state.progress(record) > before
    again = apply(record, event(record, 0, "person-0", "completed"))
    assert not again.changed and "already COMPLETED" in again.note
    late_segment = apply(
        record, event(record, 0, "segment", "completed", masks=[mask(0, LEFT), mask(1, RIGHT)])
    )
    assert not late_segment.changed
    assert [p.name for p in record.job.images[0].passes].count("composite-0") == 1


def test_overlapping_persons_stay_sequential():
    record, _ = segmented(persons=(LEFT, NEAR_LEFT))
    assert [p.name for p in record.job.images[0].passes] == [
        "prepare",
        "base",
        "segment",
        "person-0",
        "person-1",
    ]
    assert statuses(record)["person-1"] == "PENDING"
    assert not any(p.depends_on for p in record.plans[0].passes)


def test_parallel_off_keeps_the_sequential_chain():
    record, _ = segmented(working_size=0)
    assert statuses(record) == {
        "prepare": "COMPLETED",
        "base": "COMPLETED",
        "segment": "COMPLETED",
        "person-0": "QUEUED",
        "person-1": "PENDING",
    }


def test_three_persons_two_stages():
    record, _ = segmented(persons=(LEFT, NEAR_LEFT, RIGHT))
    names = [p.name for p in record.job.images[0].passes]
    assert names == ["prepare", "base", "segment", "person-0", "person-2", "composite-0", "person-1"]
    assert statuses(record)["person-1"] == "PENDING"
    complete(record, "person-0")
    complete(record, "person-2")
    record.outbox_requests.clear()
    complete(record, "composite-0")
    assert requests(record)["person-1"].spec.image.key.endswith("composite-0.png")
    record.outbox_requests.clear()
    complete(record, "person-1")
    assert record.job.images[0].final.key.endswith("person-1.png")


def test_a_retried_parallel_person_keeps_its_stage_input():
    record, _ = segmented()
    complete(record, "person-0")
    record.outbox_requests.clear()
    failed = event(record, 0, "person-1", "failed", code=common_pb2.ERROR_CODE_UNAVAILABLE)
    apply(record, failed)
    retry = requests(record)["person-1"]
    assert retry.attempt == 2
    assert retry.spec.image == record.job.images[0].passes[1].output  # not person-0's output
    complete(record, "person-1")
    assert statuses(record)["composite-0"] == "QUEUED"


def test_a_parallel_person_failing_for_good_fails_the_chain_and_cancels_its_sibling():
    record, _ = segmented()
    apply(record, event(record, 0, "person-0", "started", steps_total=10))
    apply(record, event(record, 0, "person-1", "failed", code=common_pb2.ERROR_CODE_INVALID_ARGUMENT))
    assert statuses(record)["person-1"] == "FAILED"
    assert statuses(record)["person-0"] == "CANCELLED"
    assert statuses(record)["composite-0"] == "CANCELLED"
    assert record.job.state == jobs_pb2.JOB_STATE_FAILED
    late = apply(record, event(record, 0, "person-0", "completed"))
    assert not late.changed


def test_cancel_cancels_every_parallel_pass_in_flight():
    record, _ = segmented()
    ids = {r.request.pass_name: r.msg_id for r in record.outbox_requests}
    job_state.clear_outbox(record, record.job.last_sequence, [ids["person-0"], ids["person-1"]])
    outcome = job_state.cancel(record, T0 + timedelta(seconds=5))
    assert outcome.finished
    assert set(statuses(record).values()) <= {"COMPLETED", "CANCELLED"}
    assert statuses(record)["composite-0"] == "CANCELLED"


def test_the_setting_defaults_on_and_reaches_the_person_plans():
    from multipass.errors import ConfigError
    from multipass_gateway.settings import GatewaySettings

    assert GatewaySettings.from_env({}).parallel_persons
    assert not GatewaySettings.from_env({"MULTIPASS_GATEWAY_PARALLEL_PERSONS": "false"}).parallel_persons
    try:
        GatewaySettings.from_env({"MULTIPASS_GATEWAY_PARALLEL_PERSONS": "sometimes"})
    except ConfigError as error:
        assert "MULTIPASS_GATEWAY_PARALLEL_PERSONS" in str(error)
    else:
        raise AssertionError("an unreadable MULTIPASS_GATEWAY_PARALLEL_PERSONS was accepted")
    record = record_for(parsed_prompt(2), cfg=config(parallel_working_size=512))
    persons = [p for p in record.plans[0].passes if p.kind == "person"]
    assert [p.parallel_working_size for p in persons] == [512, 512]
    others = [p for p in record.plans[0].passes if p.kind != "person"]
    assert all(p.parallel_working_size == 0 for p in others)


def test_persons_of_a_parallel_stage_name_no_next_pass():
    record, _ = segmented()
    assert not any(request.HasField("next_pass") for request in requests(record).values())
