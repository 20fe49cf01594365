"""The batched-base bench compares like for like: the same seeds, batched and one by one, on the tiny
model; and its figure is registered with the runner (no timing thresholds)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from multipass_bench import METRIC_KEYS, batch_bench, report, runner, workload
from multipass_bench.report import MetricUnavailable
from multipass_bench.timing import is_positive_finite

MODELS_ROOT = Path(__file__).resolve().parents[2] / ".multipass" / "test-models"


@pytest.fixture(scope="module")
def engine():
    workload.set_threads(1)
    return workload.make_engine(workload.ensure_models(MODELS_ROOT), working_size=64)


def test_batched_base_speedup_times_both_sides_of_the_same_images(engine):
    speedup, details = batch_bench.batched_base_speedup(engine, images=3, side=64, steps=2, repetitions=2)
    assert is_positive_finite(speedup)
    assert details["repetitions"] == 2 and len(details["batched_seconds"]) == 2
    assert speedup == pytest.approx(statistics.median(details["ratios"]), rel=1e-3)
    assert details["max_level_difference"] <= batch_bench.MAX_LEVELS
    assert "3 base txt2img passes 64x64, 2 steps" in details["passes"]


def test_a_batch_that_does_not_repeat_its_seeds_is_no_figure(engine, monkeypatch):
    # An engine whose batch returns another seed's images must not yield a figure.
    real = engine.run_batch
    monkeypatch.setattr(engine, "run_batch", lambda spec, seeds, *a, **k: real(spec, [s + 50 for s in seeds]))
    with pytest.raises(MetricUnavailable, match="differ from unbatched"):
        batch_bench.batched_base_speedup(engine, images=2, side=64, steps=2, repetitions=1)


def test_the_figure_is_registered():
    assert "batched_base_speedup" in METRIC_KEYS
    assert "batched_base_speedup" in report.TARGETS and "batched_base_speedup" in runner.SCHEDULE
    assert runner.Plan.quick().batched_base < runner.Plan().batched_base
