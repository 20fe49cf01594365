"""``python -m multipass_bench``: every figure, one JSON object on the last line of stdout.

Each figure is measured in isolation: a figure that cannot be measured (a missing service, a failed
job) is null with its reason, and the others are still measured. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from multipass_bench import METRIC_KEYS, report, workload
from multipass_bench.report import MetricUnavailable, say


@dataclass(frozen=True)
class Plan:
    """Repetitions per figure (``--quick`` lowers them)."""

    crop: int = 2
    lora: int = 4
    pass_cache: int = 3
    overhead: int = 7
    stack_cache: int = 2
    idle_burst: int = 4
    control_jobs: int = 40
    control_rounds: int = 3
    memory: int = 1
    memory_calibration: bool = True
    parallel: int = 3
    #: parallel_persons_speedup also measures the engine-level variant (details["engine_level"]).
    parallel_engine_level: bool = True
    batched_base: int = 3

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            crop=1,
            lora=2,
            pass_cache=1,
            overhead=2,
            stack_cache=1,
            idle_burst=2,
            control_jobs=16,
            control_rounds=1,
            memory=1,
            memory_calibration=False,
            parallel=1,
            parallel_engine_level=False,
            batched_base=1,
        )


#: When each figure starts in a normal run on a 2-core machine (seconds from the start). A figure that
#: starts more than SLACK_SECONDS later than this runs with the --quick repetitions, so that a run on a
#: busy shared machine still ends within ten minutes; the report lists such figures.
SCHEDULE = {
    "crop_vs_full_speedup": 30,
    "lora_switch_fraction": 90,
    "pass_cache_speedup": 150,
    "batched_base_speedup": 200,
    "orchestration_overhead_ratio": 290,
    "control_plane_passes_per_s": 360,
    "shared_components_memory_ratio": 440,
    "parallel_persons_speedup": 490,
}
SLACK_SECONDS = 45
#: How the summary lines show whether a figure met its target.
MET_WORDS = {True: "met", False: "NOT met", None: ""}


class Bench:
    def __init__(self, *, plan: Plan, directory: Path, only: set[str], profile_dir: Path | None):
        self.plan = plan
        self.directory = directory
        self.only = only
        self.profile_dir = profile_dir
        self.figures: dict[str, float | None] = {}
        self.reasons: dict[str, str] = {}
        self.details: dict[str, dict] = {}
        self._engine = None
        self.started = time.perf_counter()
        self.shortened: list[str] = []
        self._plans: dict[str, Plan] = {}

    def plan_for(self, key: str) -> Plan:
        """The plan for ``key`` (decided once per figure): the quick one when the run is behind schedule."""
        if key in self._plans:
            return self._plans[key]
        late = time.perf_counter() - self.started - SCHEDULE.get(key, 0)
        plan = self.plan
        if self.plan == Plan() and late > SLACK_SECONDS:
            self.shortened.append(key)
            say(f"{late:.0f} s behind schedule: {key} runs with the --quick repetitions")
            plan = Plan.quick()
        self._plans[key] = plan
        return plan

    @property
    def model_root(self) -> Path:
        return self.directory / "models"

    def engine(self):
        if self._engine is None:
            say("loading the engine (tiny SD1.5, CPU, 1 torch thread)")
            self._engine = workload.make_engine(self.model_root, working_size=workload.SD15_WORKING_SIZE)
        return self._engine

    def wanted(self, key: str) -> bool:
        return not self.only or key in self.only

    def measure(self, key: str, fn: Callable[[], tuple]) -> None:
        if not self.wanted(key):
            self.figures[key] = None
            self.reasons[key] = "not selected (--only)"
            return
        say(f"measuring {key}")
        started = time.perf_counter()
        profiler = cProfile.Profile() if self.profile_dir is not None else None
        try:
            if profiler is not None:
                profiler.enable()
            value, details = fn()
            if not report.is_positive_finite(value):
                raise MetricUnavailable(f"measured {value!r}, not a positive finite number")
            self.figures[key] = float(value)
            self.details[key] = details
        except MetricUnavailable as error:
            self.figures[key] = None
            self.reasons[key] = str(error)
            say(f"{key}: unavailable: {error}")
        except Exception as error:  # noqa: BLE001 - one broken figure must not hide the others
            self.figures[key] = None
            self.reasons[key] = f"{type(error).__name__}: {error}"
            say(f"{key}: failed:\n{traceback.format_exc()}")
        finally:
            if profiler is not None:
                profiler.disable()
                self._write_profile(key, profiler)
        self.details.setdefault(key, {})["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        say(f"{key} = {self.figures[key]} ({self.details[key]['elapsed_seconds']} s)")

    def _write_profile(self, key: str, profiler: cProfile.Profile) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        path = self.profile_dir / f"{key}.txt"
        path.write_text(text.getvalue())
        say(f"profile of {key}: {path}")

    # -- the figures ---------------------------------------------------------------------------------

    def run(self) -> dict:
        self.started = time.perf_counter()
        plan = self.plan_for
        machine, versions = report.machine_info(), report.versions()
        workload.set_threads(1)
        say(f"tiny models under {self.model_root} (built once)")
        workload.ensure_models(self.model_root, segmentation=True)
        loras = workload.write_loras(self.model_root, self.directory / "loras")
        from multipass_bench import engine_bench

        self.measure(
            "crop_vs_full_speedup",
            lambda: engine_bench.crop_vs_full(self.engine(), repetitions=plan("crop_vs_full_speedup").crop),
        )
        self.measure(
            "lora_switch_fraction",
            lambda: engine_bench.lora_switch(
                self.engine(), loras, repetitions=plan("lora_switch_fraction").lora
            ),
        )
        self.measure(
            "pass_cache_speedup",
            lambda: engine_bench.pass_cache_speedup(
                self.engine(), loras, repetitions=plan("pass_cache_speedup").pass_cache
            ),
        )
        from multipass_bench import batch_bench

        self.measure(
            "batched_base_speedup",
            lambda: batch_bench.batched_base_speedup(
                self.engine(), repetitions=plan("batched_base_speedup").batched_base
            ),
        )
        self._stack_figures()
        from multipass_bench import control_plane

        self.measure(
            "control_plane_passes_per_s",
            lambda: control_plane.control_plane_throughput(
                self.directory / "control-plane",
                self.model_root,
                jobs=plan("control_plane_passes_per_s").control_jobs,
                rounds=plan("control_plane_passes_per_s").control_rounds,
                profile_dir=self.profile_dir / "control-plane" if self.profile_dir is not None else None,
            ),
        )
        self._engine = None  # free it before the memory probes
        from multipass_bench import memory_bench, parallel_bench

        self.measure(
            "shared_components_memory_ratio",
            lambda: memory_bench.shared_components_memory(
                self.model_root,
                repetitions=plan("shared_components_memory_ratio").memory,
                calibrate=plan("shared_components_memory_ratio").memory_calibration,
            ),
        )
        self.measure(
            "parallel_persons_speedup",
            lambda: parallel_bench.parallel_persons_speedup(
                self.model_root,
                self.directory / "parallel-persons",
                repetitions=plan("parallel_persons_speedup").parallel,
                engine_level=plan("parallel_persons_speedup").parallel_engine_level,
            ),
        )
        settings = {
            "plan": self.plan.__dict__,
            "shortened_to_quick": self.shortened,
            "bench_dir": str(self.directory),
            "torch_threads": 1,
            "models": "tiny random-weight SD1.5-architecture models (multipass_dev.tiny_models)",
        }
        built = report.build_report(
            self.figures, self.reasons, self.details, machine=machine, versions_=versions, settings=settings
        )
        built.update(
            report.overhead_spread(
                self.directory / report.HISTORY_FILE, built["orchestration_overhead_ratio"]
            )
        )
        return built

    def _stack_figures(self) -> None:
        keys = ("orchestration_overhead_ratio",)
        if not any(self.wanted(k) for k in (*keys, "pass_cache_speedup")):
            self.figures["orchestration_overhead_ratio"] = None
            self.reasons["orchestration_overhead_ratio"] = "not selected (--only)"
            return
        from multipass_bench import stack_bench

        stack = None
        try:
            stack = stack_bench.BenchStack(
                self.directory / "stack",
                self.model_root,
                profile_dir=self.profile_dir / "stack" if self.profile_dir is not None else None,
            ).__enter__()
        except MetricUnavailable as error:
            for key in keys:
                self.figures[key], self.reasons[key] = None, str(error)
            self.details.setdefault("pass_cache_speedup", {})["through_stack"] = {"unavailable": str(error)}
            say(f"local stack unavailable: {error}")
            return
        try:
            tunes = self.directory / "stack-tunes"
            self.measure(
                "orchestration_overhead_ratio",
                lambda: stack_bench.orchestration_overhead(
                    stack,
                    self.engine(),
                    repetitions=self.plan_for("orchestration_overhead_ratio").overhead,
                    tune_dir=tunes,
                    burst_jobs=self.plan_for("orchestration_overhead_ratio").idle_burst,
                ),
            )
            if self.wanted("pass_cache_speedup"):
                try:
                    through = stack_bench.pass_cache_through_stack(
                        stack,
                        repetitions=self.plan_for("orchestration_overhead_ratio").stack_cache,
                        tune_dir=tunes,
                    )
                except MetricUnavailable as error:
                    through = {"unavailable": str(error)}
                except Exception as error:  # noqa: BLE001
                    through = {"unavailable": f"{type(error).__name__}: {error}"}
                self.details.setdefault("pass_cache_speedup", {})["through_stack"] = through
        finally:
            stack.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multipass_bench",
        description="Measure Multipass's figures on tiny models; print one JSON object as the last line.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", default="", help=f"comma-separated figures ({', '.join(METRIC_KEYS)})")
    parser.add_argument(
        "--dir", type=Path, help="bench directory (default .multipass/bench or $MULTIPASS_BENCH_DIR)"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="write a cProfile summary per figure to DIR"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout (no summary)")
    args = parser.parse_args(argv)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    unknown = only - set(METRIC_KEYS)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    bench = Bench(
        plan=Plan.quick() if args.quick else Plan(),
        directory=(args.dir or workload.bench_dir()).absolute(),
        only=only,
        profile_dir=args.profile.absolute() if args.profile else None,
    )
    result = bench.run()
    result["settings"]["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    problems = report.check_report(result)
    if problems:
        say("report problems: " + "; ".join(problems))
    if not args.json:
        for key in METRIC_KEYS:
            target = result["targets"][key]
            met = MET_WORDS[target["met"]]
            shown = result[key] if result[key] is not None else f"null ({result['reasons'][key]})"
            print(f"{key:34s} {shown} {target['target'] or ''} {met}".rstrip())
        per_core = result["targets"][report.PER_CORE_KEY]
        met = MET_WORDS[per_core["met"]]
        print(f"{report.PER_CORE_KEY:34s} {result[report.PER_CORE_KEY]} {per_core['target']} {met}".rstrip())
    print(report.dumps(result), flush=True)
    return 1 if problems else 0
