"""The bench report: machine, versions, figures (a positive finite number, or null with a reason),
targets, and details; plus the checks the tests and the runner apply to it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

from multipass_bench import METRIC_KEYS
from multipass_bench.timing import is_positive_finite

#: (comparison, bound) per figure; None = no target (a rate to read, not to pass).
TARGETS: dict[str, tuple[str, float] | None] = {
    "orchestration_overhead_ratio": ("<=", 1.05),
    "control_plane_passes_per_s": None,
    "crop_vs_full_speedup": (">=", 3.0),
    "lora_switch_fraction": None,
    "pass_cache_speedup": None,
    "shared_components_memory_ratio": ("<=", 1.05),
    "parallel_persons_speedup": None,
    "batched_base_speedup": None,
}


#: The orchestration figures of the last runs on this bench directory, one JSON line per run.
HISTORY_FILE = "orchestration-history.jsonl"
#: Runs the spread is taken over (this one included).
SPREAD_RUNS = 5
#: Target of max/min of the orchestration figure over those runs.
SPREAD_TARGET = 1.05


def overhead_spread(history: Path, value: float | None) -> dict:
    """``orchestration_overhead_spread``: max/min of the orchestration figure over the last
    :data:`SPREAD_RUNS` runs that measured it (this one included), read from and appended to ``history``.

    Null (with the number of runs so far) until two runs measured it: one run has no spread.
    """
    runs: list[float] = []
    with contextlib.suppress(OSError):
        for line in Path(history).read_text().splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                runs.append(float(json.loads(line)["orchestration_overhead_ratio"]))
    if value is not None:
        runs.append(float(value))
        with contextlib.suppress(OSError):
            Path(history).parent.mkdir(parents=True, exist_ok=True)
            with open(history, "a") as handle:
                handle.write(json.dumps({"orchestration_overhead_ratio": value}) + "\n")
    last = runs[-SPREAD_RUNS:]
    spread = round(max(last) / min(last), 4) if len(last) >= 2 and min(last) > 0 else None
    return {
        "orchestration_overhead_spread": spread,
        "orchestration_overhead_history": {
            "runs": [round(x, 4) for x in last],
            "target": f"max/min <= {SPREAD_TARGET:g} over {SPREAD_RUNS} consecutive runs, each <= 1.05",
            "met": None
            if spread is None or len(last) < SPREAD_RUNS
            else spread <= SPREAD_TARGET and max(last) <= 1.05,
        },
    }


class MetricUnavailable(Exception):
    """A figure that cannot be measured here (a missing dependency, a stack that does not run a job):
    the report carries null and this message as the reason, never a made-up number."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """What ran the bench: CPU model, cores, memory, load when it started, and the accelerator."""
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "memory_gib": None,
        "platform": platform.platform(),
        "load_average_at_start": None,
        "device": "cpu",
    }
    if info["memory_bytes"]:
        info["memory_gib"] = round(info["memory_bytes"] / 2**30, 1)
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            found[name] = None
    import multipass

    found["multipass"] = multipass.__version__
    return found


#: The control plane's rate per gateway core (passes per gateway CPU second, one replica) and its target.
PER_CORE_KEY = "control_plane_passes_per_gateway_core"
PER_CORE_TARGET = 1000.0


def per_gateway_core(details: Mapping[str, dict]) -> dict:
    """``control_plane_passes_per_gateway_core`` (from the control-plane figure's details; null when it was not
    measured) and its target, for the report's top level and its ``targets``."""
    value = (details.get("control_plane_passes_per_s") or {}).get("passes_per_gateway_cpu_second_1_replica")
    value = round(float(value), 1) if is_positive_finite(value) else None
    return {
        PER_CORE_KEY: value,
        "target": {
            "target": f">= {PER_CORE_TARGET:g}",
            "met": None if value is None else value >= PER_CORE_TARGET,
        },
    }


def head_and_tail(text: str, limit: int = 1500) -> str:
    """``text`` cut to about ``limit`` characters for a reason: its first line (which process failed, and
    why) and its last lines (the end of that process's log)."""
    if len(text) <= limit:
        return text
    first, _, rest = text.partition("\n")
    first = first[: limit // 3]
    return f"{first}\n...\n{rest[-(limit - len(first)) :]}"


def target_met(key: str, value: float | None) -> bool | None:
    target = TARGETS.get(key)
    if target is None or value is None:
        return None
    op, bound = target
    return value <= bound if op == "<=" else value >= bound


def build_report(
    figures: Mapping[str, float | None],
    reasons: Mapping[str, str],
    details: Mapping[str, dict],
    *,
    machine: dict,
    versions_: dict,
    settings: dict,
) -> dict:
    """The JSON object ``make bench`` prints (keys in METRIC_KEYS order first)."""
    report: dict = {}
    for key in METRIC_KEYS:
        value = figures.get(key)
        report[key] = round(float(value), 4) if value is not None else None
    report["reasons"] = {k: reasons.get(k) or "not measured" for k in METRIC_KEYS if report[k] is None}
    report["targets"] = {
        key: {
            "target": f"{TARGETS[key][0]} {TARGETS[key][1]:g}" if TARGETS[key] else None,
            "met": target_met(key, report[key]),
        }
        for key in METRIC_KEYS
    }
    report["machine"] = machine
    report["versions"] = versions_
    report["settings"] = settings
    report["details"] = {k: details.get(k, {}) for k in METRIC_KEYS}
    per_core = per_gateway_core(details)
    report[PER_CORE_KEY] = per_core[PER_CORE_KEY]
    report["targets"][PER_CORE_KEY] = per_core["target"]
    return report


def check_report(report: Mapping) -> list[str]:
    """Problems with a report: a missing key, a figure neither positive finite nor null with a reason."""
    problems = []
    for key in (*METRIC_KEYS, "machine", "versions"):
        if key not in report:
            problems.append(f"missing key {key}")
    for key in METRIC_KEYS:
        value = report.get(key)
        if value is None:
            if not str((report.get("reasons") or {}).get(key, "")).strip():
                problems.append(f"{key} is null without a reason")
        elif not is_positive_finite(value):
            problems.append(f"{key} = {value!r} is not a positive finite number")
    machine = report.get("machine") or {}
    for key in ("cpu_model", "cores", "memory_bytes"):
        if key not in machine:
            problems.append(f"machine lacks {key}")
    for key in ("python", "torch", "diffusers", "transformers", "multipass"):
        if key not in (report.get("versions") or {}):
            problems.append(f"versions lacks {key}")
    return problems


def dumps(report: Mapping) -> str:
    """One line of JSON (NaN/inf are refused: a figure is a number or null)."""
    return json.dumps(report, sort_keys=False, allow_nan=False, default=_plain)


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def say(message: str) -> None:
    """Progress goes to stderr; stdout ends with the JSON line."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
