"""NATS names: the subjects of docs/CONTRACTS.md, and refusal of tokens that would address other subjects."""

from __future__ import annotations

import pytest

from multipass import subjects
from multipass.errors import InvalidInput


def test_names_match_the_contract():
    assert subjects.STREAM_PASSES == "MULTIPASS_PASSES"
    assert subjects.STREAM_EVENTS == "MULTIPASS_EVENTS"
    assert subjects.STREAM_JOB_EVENTS == "MULTIPASS_JOB_EVENTS"
    assert subjects.KV_BUCKETS == (
        "multipass-jobs",
        "multipass-idempotency",
        "multipass-tenants",
        "multipass-tunes",
    )
    assert subjects.diffusion_pass_subject("sd15-tiny") == "multipass.pass.diffusion.sd15-tiny"
    assert subjects.event_subject("J1", "progress") == "multipass.events.J1.progress"
    assert subjects.job_events_filter("J1") == "multipass.events.J1.>"
    assert subjects.job_event_subject("J1") == "multipass.jobevents.J1"
    assert subjects.cancel_subject("J1") == "multipass.cancel.J1"
    assert subjects.diffusion_durable("sd15-tiny") == "diffusion-sd15-tiny"


def test_every_builder_subject_falls_in_its_stream():
    assert subjects.diffusion_pass_subject("m").startswith(subjects.PASSES_SUBJECTS[:-1])
    assert subjects.event_subject("j", "failed").startswith(subjects.EVENTS_SUBJECTS[:-1])
    assert subjects.job_event_subject("j").startswith(subjects.JOB_EVENTS_SUBJECTS[:-1])


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "x>", "a b", "tab\t", "é", "x" * 129])
def test_unsafe_tokens_are_refused(bad):
    with pytest.raises(InvalidInput) as caught:
        subjects.diffusion_pass_subject(bad)
    assert caught.value.violations[0].field == "model"
    with pytest.raises(InvalidInput) as caught:
        subjects.cancel_subject(bad)
    assert caught.value.violations[0].field == "job_id"


def test_job_id_is_read_back_from_subjects():
    assert subjects.job_id_from_subject("multipass.events.J7.completed") == "J7"
    assert subjects.job_id_from_subject("multipass.cancel.J7") == "J7"
    with pytest.raises(InvalidInput):
        subjects.job_id_from_subject("multipass.pass.diffusion.m")


def test_pass_msg_id_format():
    assert subjects.pass_msg_id("J1", 0, "base", 0) == "J1:0:base:0"
    assert subjects.pass_msg_id("J1", 2, "person-1", 3, "progress:12") == "J1:2:person-1:3:progress:12"


def test_pass_msg_id_reports_every_bad_part():
    with pytest.raises(InvalidInput) as caught:
        subjects.pass_msg_id("a.b", -1, "has space", True)
    assert [v.field for v in caught.value.violations] == ["job_id", "image", "pass_name", "attempt"]
