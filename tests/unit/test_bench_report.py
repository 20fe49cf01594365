"""The bench report and timing helpers: every key, numbers or null-with-reason, interleaving, medians."""

from __future__ import annotations

import json
import math

import pytest

from multipass_bench import METRIC_KEYS, report
from multipass_bench.runner import Bench, Plan
from multipass_bench.timing import Paired, interleave, is_positive_finite


def a_report(**figures) -> dict:
    values = {key: 1.5 for key in METRIC_KEYS}
    values.update(figures)
    reasons = {key: "stack not running" for key, value in values.items() if value is None}
    return report.build_report(
        values,
        reasons,
        {key: {"x": 1} for key in METRIC_KEYS},
        machine=report.machine_info(),
        versions_=report.versions(),
        settings={},
    )


def test_report_has_every_key_machine_and_versions():
    built = a_report()
    for key in (*METRIC_KEYS, "machine", "versions", "targets", "details", "reasons"):
        assert key in built
    assert report.check_report(built) == []
    for key in ("cpu_model", "cores", "memory_bytes"):
        assert key in built["machine"]
    assert built["machine"]["cores"] >= 1
    for key in ("python", "torch", "diffusers", "transformers", "multipass"):
        assert built["versions"][key]
    line = report.dumps(built)
    assert "\n" not in line
    assert json.loads(line)["crop_vs_full_speedup"] == 1.5


def test_null_figures_carry_their_reason():
    built = a_report(orchestration_overhead_ratio=None)
    assert built["orchestration_overhead_ratio"] is None
    assert built["reasons"] == {"orchestration_overhead_ratio": "stack not running"}
    assert built["targets"]["orchestration_overhead_ratio"]["met"] is None
    assert report.check_report(built) == []
    built["reasons"] = {}
    assert report.check_report(built) == ["orchestration_overhead_ratio is null without a reason"]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, "fast", True])
def test_a_figure_must_be_positive_and_finite(bad):
    built = a_report()
    built["pass_cache_speedup"] = bad
    assert report.check_report(built) == [f"pass_cache_speedup = {bad!r} is not a positive finite number"]


def test_missing_keys_are_reported():
    built = a_report()
    del built["parallel_persons_speedup"], built["machine"]
    problems = report.check_report(built)
    assert "missing key parallel_persons_speedup" in problems and "missing key machine" in problems


def test_dumps_refuses_nan():
    with pytest.raises(ValueError):
        report.dumps({"x": math.nan})


def test_targets():
    assert report.target_met("orchestration_overhead_ratio", 1.05) is True
    assert report.target_met("orchestration_overhead_ratio", 1.2) is False
    assert report.target_met("crop_vs_full_speedup", 3.5) is True
    assert report.target_met("crop_vs_full_speedup", 2.0) is False
    assert report.target_met("control_plane_passes_per_s", 10.0) is None
    built = a_report(crop_vs_full_speedup=4.0, shared_components_memory_ratio=1.2)
    assert built["targets"]["crop_vs_full_speedup"] == {"target": ">= 3", "met": True}
    assert built["targets"]["shared_components_memory_ratio"] == {"target": "<= 1.05", "met": False}


def test_interleave_alternates_the_order_after_the_warmup():
    calls = []

    def run(name, seconds):
        def runner():
            calls.append(name)
            return seconds

        return runner

    paired = interleave(run("a", 2.0), run("b", 1.0), repetitions=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert paired.a == [2.0] * 4 and paired.b == [1.0] * 4
    assert paired.median_ratio == 2.0


def test_interleave_times_runners_that_return_nothing():
    paired = interleave(lambda: None, lambda: None, repetitions=2, warmup=0)
    assert all(x >= 0 for x in paired.a + paired.b) and len(paired.a) == 2


def test_paired_ratio_is_the_median_of_per_repetition_ratios():
    paired = Paired(a=[3.0, 10.0, 4.0], b=[1.0, 2.0, 4.0])
    assert paired.ratios == [3.0, 5.0, 1.0]
    assert paired.median_ratio == 3.0
    summary = paired.summary("stack", "engine")
    assert summary["stack_seconds_median"] == 4.0 and summary["repetitions"] == 3


def test_is_positive_finite():
    assert is_positive_finite(0.5)
    assert not any(is_positive_finite(v) for v in (0, -2, math.nan, math.inf, None, "1", False))


def test_one_failing_figure_does_not_hide_the_others(tmp_path):
    bench = Bench(plan=Plan.quick(), directory=tmp_path, only=set(), profile_dir=tmp_path / "profiles")

    def broken():
        raise RuntimeError("boom")

    def unavailable():
        raise report.MetricUnavailable("the gateway is not there")

    bench.measure("crop_vs_full_speedup", lambda: (4.2, {"a": 1}))
    bench.measure("pass_cache_speedup", broken)
    bench.measure("orchestration_overhead_ratio", unavailable)
    bench.measure("lora_switch_fraction", lambda: (0.0, {}))
    assert bench.figures["crop_vs_full_speedup"] == 4.2
    assert bench.details["crop_vs_full_speedup"]["a"] == 1
    assert bench.figures["pass_cache_speedup"] is None
    assert bench.reasons["pass_cache_speedup"] == "RuntimeError: boom"
    assert bench.reasons["orchestration_overhead_ratio"] == "the gateway is not there"
    assert "not a positive finite number" in bench.reasons["lora_switch_fraction"]
    assert (tmp_path / "profiles" / "crop_vs_full_speedup.txt").read_text()


def test_only_skips_the_other_figures(tmp_path):
    bench = Bench(plan=Plan.quick(), directory=tmp_path, only={"crop_vs_full_speedup"}, profile_dir=None)
    bench.measure("pass_cache_speedup", lambda: (2.0, {}))
    assert bench.figures["pass_cache_speedup"] is None
    assert bench.reasons["pass_cache_speedup"] == "not selected (--only)"


def test_unknown_figure_is_refused(capsys):
    from multipass_bench.runner import main

    with pytest.raises(SystemExit):
        main(["--only", "speed_of_light"])
    assert "speed_of_light" in capsys.readouterr().err


def test_a_late_figure_runs_with_the_quick_repetitions(tmp_path):
    from multipass_bench import runner

    bench = Bench(plan=Plan(), directory=tmp_path, only=set(), profile_dir=None)
    assert bench.plan_for("crop_vs_full_speedup") == Plan()
    bench.started -= runner.SCHEDULE["parallel_persons_speedup"] + runner.SLACK_SECONDS + 1
    assert bench.plan_for("parallel_persons_speedup") == Plan.quick()
    assert bench.plan_for("parallel_persons_speedup") == Plan.quick()  # decided once
    assert bench.shortened == ["parallel_persons_speedup"]
    quick = Bench(plan=Plan.quick(), directory=tmp_path, only=set(), profile_dir=None)
    quick.started -= 10_000
    assert quick.plan_for("crop_vs_full_speedup") == Plan.quick() and quick.shortened == []


def test_the_control_planes_rate_per_gateway_core_is_reported_against_its_target():
    built = report.build_report(
        {key: 1.5 for key in METRIC_KEYS},
        {},
        {"control_plane_passes_per_s": {"passes_per_gateway_cpu_second_1_replica": 340.04}},
        machine=report.machine_info(),
        versions_=report.versions(),
        settings={},
    )
    assert built[report.PER_CORE_KEY] == 340.0
    assert built["targets"][report.PER_CORE_KEY] == {"target": ">= 1000", "met": False}
    unmeasured = a_report()
    assert unmeasured[report.PER_CORE_KEY] is None
    assert unmeasured["targets"][report.PER_CORE_KEY]["met"] is None
    assert report.check_report(built) == []


def test_a_long_reason_keeps_its_first_line_and_its_end():
    text = "standin did not become ready within 240 s\n" + "\n".join(f"log line {i}" for i in range(500))
    cut = report.head_and_tail(text)
    assert len(cut) <= 1510
    assert cut.startswith("standin did not become ready within 240 s\n...")
    assert cut.endswith("log line 499")
    assert report.head_and_tail("short") == "short"
