"""The names of docs/CONTRACTS.md (streams, subjects, buckets, keys), and refusal of tokens that would address
other subjects."""

from __future__ import annotations

import pytest

from multipass import names
from multipass.errors import InvalidInput


def test_names_match_the_contract():
    assert names.STREAM_PASSES == "MULTIPASS_PASSES"
    assert names.STREAM_EVENTS == "MULTIPASS_EVENTS"
    assert names.STREAM_JOB_EVENTS == "MULTIPASS_JOB_EVENTS"
    assert names.KV_BUCKETS == (
        "multipass-jobs",
        "multipass-idempotency",
        "multipass-tenants",
        "multipass-tunes",
    )
    assert names.diffusion_pass_subject("sd15-tiny") == "multipass.pass.diffusion.sd15-tiny"
    assert names.event_subject("J1", "progress") == "multipass.events.J1.progress"
    assert names.job_events_filter("J1") == "multipass.events.J1.>"
    assert names.job_event_subject("J1") == "multipass.jobevents.J1"
    assert names.cancel_subject("J1") == "multipass.cancel.J1"
    assert names.diffusion_durable("sd15-tiny") == "diffusion-sd15-tiny"
    assert names.GATEWAY_PASS_SUBJECT == "multipass.pass.gateway"
    assert (
        names.PASS_MAX_DELIVERIES_ADVISORY == "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MULTIPASS_PASSES.*"
    )
    assert names.OBJECT_BUCKETS == ("multipass-jobs", "multipass-tunes", "multipass-models")


def test_keys_match_the_contract():
    assert names.job_key("t1", "J1") == "t1.J1"
    assert names.active_key("t1", "J1") == "active.t1.J1"
    assert names.tune_key("t1", "77") == "t1.77"
    assert names.pass_output_key("t1", "J1", 2, "base") == "jobs/t1/J1/image-2/base.png"
    assert names.input_key("t1", "J1", "mask") == "jobs/t1/J1/inputs/mask.png"
    assert names.upload_key("t1", "ab12") == "uploads/t1/ab12.png"
    assert names.tune_prefix("t1", "77") == "tunes/t1/77/"


def test_every_builder_subject_falls_in_its_stream():
    assert names.diffusion_pass_subject("m").startswith(names.PASSES_SUBJECTS[:-1])
    assert names.event_subject("j", "failed").startswith(names.EVENTS_SUBJECTS[:-1])
    assert names.job_event_subject("j").startswith(names.JOB_EVENTS_SUBJECTS[:-1])


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "x>", "a b", "tab\t", "é", "x" * 129])
def test_unsafe_tokens_are_refused(bad):
    with pytest.raises(InvalidInput) as caught:
        names.diffusion_pass_subject(bad)
    assert caught.value.violations[0].field == "model"
    with pytest.raises(InvalidInput) as caught:
        names.cancel_subject(bad)
    assert caught.value.violations[0].field == "job_id"


def test_job_id_is_read_back_from_subjects():
    assert names.job_id_from_subject("multipass.events.J7.completed") == "J7"
    assert names.job_id_from_subject("multipass.cancel.J7") == "J7"
    with pytest.raises(InvalidInput):
        names.job_id_from_subject("multipass.pass.diffusion.m")


def test_pass_msg_id_format():
    assert names.pass_msg_id("J1", 0, "base", 0) == "J1:0:base:0"
    assert names.pass_msg_id("J1", 2, "person-1", 3, "progress:12") == "J1:2:person-1:3:progress:12"


def test_pass_msg_id_reports_every_bad_part():
    with pytest.raises(InvalidInput) as caught:
        names.pass_msg_id("a.b", -1, "has space", True)
    assert [v.field for v in caught.value.violations] == ["job_id", "image", "pass_name", "attempt"]
