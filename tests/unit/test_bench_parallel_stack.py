"""The stack-level parallel persons figure without starting stacks: pass timings from a job, and the
engine-level measurement kept under details (its failure does not fail the figure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from multipass.v1 import jobs_pb2
from multipass_bench import parallel_bench
from multipass_bench.report import MetricUnavailable

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_pass_seconds_come_from_the_recorded_start_and_finish():
    job = jobs_pb2.Job()
    image = job.images.add()
    for name, start, end in (("person-0", 1.0, 2.5), ("person-1", 1.1, 2.0), ("composite-0", 2.6, 2.65)):
        state = image.passes.add(name=name)
        state.started_at.FromDatetime(T0 + timedelta(seconds=start))
        state.finished_at.FromDatetime(T0 + timedelta(seconds=end))
    image.passes.add(name="hires")  # never started: left out
    assert parallel_bench._pass_seconds(job) == {"person-0": 1.5, "person-1": 0.9, "composite-0": 0.05}


def test_the_figure_keeps_the_engine_level_measurement_under_details(monkeypatch, tmp_path):
    monkeypatch.setattr(
        parallel_bench,
        "parallel_persons_through_stack",
        lambda root, directory, repetitions: (1.4, {"ratios": [1.4] * repetitions}),
    )
    monkeypatch.setattr(
        parallel_bench,
        "parallel_persons",
        lambda root, repetitions, working_size: (1.6, {"image": "768x512"}),
    )
    value, details = parallel_bench.parallel_persons_speedup(tmp_path, tmp_path, repetitions=2)
    assert value == 1.4 and details["ratios"] == [1.4, 1.4]
    assert details["engine_level"]["value"] == 1.6 and details["engine_level"]["image"] == "768x512"

    def unavailable(root, repetitions, working_size):
        raise MetricUnavailable("no second core")

    monkeypatch.setattr(parallel_bench, "parallel_persons", unavailable)
    value, details = parallel_bench.parallel_persons_speedup(tmp_path, tmp_path, repetitions=1)
    assert value == 1.4 and details["engine_level"]["value"] is None
    assert details["engine_level"]["reason"] == "no second core"


def test_the_quick_plan_skips_the_engine_level_measurement(monkeypatch, tmp_path):
    from multipass_bench.runner import Plan

    monkeypatch.setattr(
        parallel_bench, "parallel_persons_through_stack", lambda root, directory, repetitions: (1.2, {})
    )

    def must_not_run(*args, **kwargs):
        raise AssertionError("the engine-level measurement ran in the quick plan")

    monkeypatch.setattr(parallel_bench, "parallel_persons", must_not_run)
    quick = Plan.quick()
    value, details = parallel_bench.parallel_persons_speedup(
        tmp_path, tmp_path, repetitions=quick.parallel, engine_level=quick.parallel_engine_level
    )
    assert value == 1.2 and details["engine_level"]["value"] is None
    assert Plan().parallel_engine_level
