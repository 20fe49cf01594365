"""Range checks of the public requests' numbers, enums, timestamps and repeated fields, and the idempotency
binding of SubmitJob (pure: no servers)."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from multipass.errors import FailedPrecondition, Reason
from multipass.v1 import jobs_pb2
from multipass_gateway.app.submission import MAX_PARAMS, check_params, check_request
from multipass_gateway.domain import idempotency, request_checks
from multipass_gateway.domain.tune_checks import check_metadata


def fields(problems) -> dict[str, str]:
    return {p.field: p.description for p in problems}


@pytest.mark.parametrize(
    ("seconds", "nanos", "field"),
    [
        (253_402_300_800, 0, "created_after.seconds"),
        (-62_135_596_801, 0, "created_after.seconds"),
        (0, 1_000_000_000, "created_after.nanos"),
        (0, -1, "created_after.nanos"),
        (2**63 - 1, 0, "created_after.seconds"),
    ],
)
def test_timestamps_outside_the_protobuf_range_are_violations_before_any_conversion(seconds, nanos, field):
    request = jobs_pb2.ListJobsRequest(created_after=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(ValueError):
        request.created_after.ToSeconds()  # what the servicer used to call: INTERNAL for the client
    found = fields(request_checks.list_jobs(request))
    assert list(found) == [field]
    assert str(seconds if field.endswith("seconds") else nanos) in found[field]


def test_the_ends_of_the_timestamp_range_are_accepted_and_converted():
    request = jobs_pb2.ListJobsRequest(
        created_after=timestamp_pb2.Timestamp(seconds=-62_135_596_800),
        created_before=timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999),
    )
    assert request_checks.list_jobs(request) == []
    assert request_checks.timestamp_seconds(request.created_before) == pytest.approx(253_402_300_800.0)


def test_unknown_job_states_name_the_allowed_ones_and_huge_lists_are_one_violation():
    found = fields(request_checks.list_jobs(jobs_pb2.ListJobsRequest(states=[1, 99, -5, 0, 99])))
    assert list(found) == ["states"]
    assert found["states"].startswith("got 99, -5, 0; expected JobState values: JOB_STATE_QUEUED (1)")
    assert "JOB_STATE_CANCELLED (6)" in found["states"] and "UNSPECIFIED" not in found["states"]
    many = request_checks.list_jobs(jobs_pb2.ListJobsRequest(states=[1] * 10_000))
    assert fields(many) == {"states": "got 10000 entries; at most 16"}
    odd = request_checks.enum_values("states", range(100, 110), jobs_pb2.JobState.DESCRIPTOR, max_count=16)
    assert fields(odd)["states"].startswith("got 100, 101, 102 and 7 more;")


def test_page_size_bounds():
    assert request_checks.page_size(0) == [] and request_checks.page_size(100) == []
    assert fields(request_checks.page_size(-(2**31))) == {
        "page_size": "got -2147483648; expected 1..100 (0 = 20)"
    }
    assert fields(request_checks.page_size(101))


def test_submit_params_are_bounded_without_echoing_huge_values():
    assert check_params({"steps": "2"}) == []
    too_many = check_params({f"p{i}": "1" for i in range(MAX_PARAMS + 1)})
    assert fields(too_many) == {"params": f"got {MAX_PARAMS + 1} entries; at most {MAX_PARAMS}"}
    found = fields(check_params({"n" * 100_000: "1", "negative_prompt": "x" * 100_000}))
    assert len(found["params"]) < 200 and "(100000 characters)" in found["params"]
    assert found["params.negative_prompt"] == "got 100000 characters; at most 8192"
    ids = fields(check_request(jobs_pb2.SubmitJobRequest(input_image_id="i" * 100_000)))
    assert len(ids["input_image_id"]) < 200


def test_reference_image_ids_past_the_bound_are_one_violation():
    metadata = jobs_pb2.TuneMetadata(
        token="ohwx", class_name="woman", base_family="sd15", reference_image_ids=["bad"] * 10_000
    )
    found = fields(check_metadata(metadata, streamed=True))
    assert found == {"metadata.reference_image_ids": "got 10000 images; at most 10"}


# idempotency ---------------------------------------------------------------------------------------------------


def submit(**fields) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(**{"prompt": "a cat", "params": {"steps": "2", "w": "256"}, **fields})


def test_the_fingerprint_ignores_the_key_and_map_order_and_sees_every_other_field():
    base = idempotency.fingerprint(submit(idempotency_key="k1"))
    assert base == idempotency.fingerprint(submit(idempotency_key="k2"))
    reordered = jobs_pb2.SubmitJobRequest(prompt="a cat", idempotency_key="k1")
    reordered.params["w"] = "256"
    reordered.params["steps"] = "2"
    assert idempotency.fingerprint(reordered) == base
    for changed in (
        jobs_pb2.SubmitJobRequest(prompt="a dog", params={"steps": "2", "w": "256"}),
        jobs_pb2.SubmitJobRequest(prompt="a cat", params={"steps": "3", "w": "256"}),
        submit(callback_url="https://example.test/hook"),
        submit(input_image_id="0" * 24),
        submit(mask_image_id="0" * 24),
    ):
        assert idempotency.fingerprint(changed) != base


def test_a_binding_round_trips_and_a_bare_job_id_still_binds():
    binding = idempotency.Binding("0" * 24, "f" * 64, ("layout: one", "two"))
    assert idempotency.Binding.decode(binding.encode()) == binding
    assert idempotency.Binding.decode(b"0123456789abcdef01234567") == idempotency.Binding(
        "0123456789abcdef01234567"
    )


def test_a_replay_carries_the_original_warnings_and_another_body_is_refused_naming_the_key():
    binding = idempotency.Binding("a" * 24, idempotency.fingerprint(submit()), ("ar=1:1 is ignored",))
    same = idempotency.replay(binding, "order-17", idempotency.fingerprint(submit()))
    assert (same.job_id, same.existing, list(same.warnings)) == ("a" * 24, True, ["ar=1:1 is ignored"])
    with pytest.raises(FailedPrecondition) as caught:
        idempotency.replay(binding, "order-17", idempotency.fingerprint(submit(prompt="a dog")))
    error = caught.value
    assert error.reason == Reason.IDEMPOTENCY_KEY_REUSED
    assert error.metadata == {"idempotencyKey": "order-17", "jobId": "a" * 24}
    assert [v.field for v in error.violations] == ["idempotency_key"]
    assert "'order-17'" in str(error) and str(error).count("different request") == 1
    # Bound before fingerprints: any body is taken as the same request.
    legacy = idempotency.replay(idempotency.Binding("b" * 24), "order-17", "0" * 64)
    assert legacy.job_id == "b" * 24 and legacy.existing
