"""One InvalidInput carries every problem; the report stays small enough for gRPC trailers."""

import pytest

from multipass.errors import InvalidInput, Violation
from multipass_prompt_parser.parser import parse_prompt
from multipass_prompt_parser.problems import MAX_REPORTED, REPORT_BUDGET_BYTES, report


def test_every_problem_of_every_part_is_reported_at_once():
    with pytest.raises(InvalidInput) as caught:
        parse_prompt(
            "a park --mask_promt x <lora:1:y> BREAK BREAK\nstesp=3\nsteps=0",
            {"cfg_scale": "99"},
        )
    fields = [v.field for v in caught.value.violations]
    assert sorted(fields) == sorted(
        ["params.stesp", "flag --mask_promt", "params.steps", "params.cfg_scale", "tag <lora:1:y>", "text"]
    )
    assert caught.value.message == "invalid request: 6 problems"


def test_single_problem_message_names_the_field():
    with pytest.raises(InvalidInput) as caught:
        parse_prompt("a park", {"steps": "99"})
    assert (
        caught.value.message == "invalid params.steps: got '99' in the request; allowed: an integer in 1..50"
    )


def test_refused_input_image_url_does_not_cause_follow_up_errors():
    with pytest.raises(InvalidInput) as caught:
        parse_prompt("a park --mask_prompt bench", {"input_image_url": "ftp://x/y", "controlnet": "depth"})
    assert [v.field for v in caught.value.violations] == ["params.input_image_url"]


def test_refused_size_does_not_cause_follow_up_errors():
    with pytest.raises(InvalidInput) as caught:
        parse_prompt("a park\nw=12\nar=16:9")
    assert [v.field for v in caught.value.violations] == ["params.w"]


def test_report_keeps_the_first_problems_and_counts_the_rest():
    found = [Violation(f"params.p{i}", "d" * 50) for i in range(30)]
    kept = report(found)
    assert len(kept) == MAX_REPORTED + 1
    assert kept[:MAX_REPORTED] == found[:MAX_REPORTED]
    assert kept[-1] == Violation(
        "request", f"{30 - MAX_REPORTED} more problems not listed; fix the above first"
    )


def test_report_respects_the_byte_budget():
    found = [Violation("params.x", "é" * 300) for _ in range(6)]
    kept = report(found)
    assert sum(len(v.field.encode()) + len(v.description.encode()) for v in kept[:-1]) <= REPORT_BUDGET_BYTES
    assert kept[-1].description.startswith(f"{6 - len(kept) + 1} more problem")


def test_report_of_few_small_problems_is_unchanged():
    found = [Violation("a", "b"), Violation("c", "d")]
    assert report(found) == found


def test_many_unknown_request_params_stay_bounded():
    with pytest.raises(InvalidInput) as caught:
        parse_prompt("a park", {f"{'😀' * 500}{i}": "v" * 3000 for i in range(200)})
    violations = caught.value.violations
    assert len(violations) <= MAX_REPORTED + 1
    assert len(str(caught.value).encode()) < 3 * REPORT_BUDGET_BYTES
