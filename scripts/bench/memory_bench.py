"""Resident memory of the diffusion worker with every pipeline built vs the one it loads: one fresh
process per variant (``memory_probe``), interleaved; plus parameter-storage identity (``data_ptr``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from multipass_bench.report import MetricUnavailable


def probe(model_root: Path, variant: str, *, timeout: float = 300.0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multipass_bench.memory_probe",
            "--model-root",
            str(model_root),
            "--variant",
            variant,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise MetricUnavailable(f"memory probe {variant} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def shared_components_memory(model_root: Path, *, repetitions: int = 2, calibrate: bool = True) -> tuple:
    """RSS(all pipelines) / RSS(one pipeline), median of paired fresh-process measurements."""
    ones, alls = [], []
    for index in range(repetitions):
        order = ("one", "all") if index % 2 == 0 else ("all", "one")
        for variant in order:
            (ones if variant == "one" else alls).append(probe(model_root, variant))
    ratios = [a["rss"] / o["rss"] for a, o in zip(alls, ones, strict=True)]
    last_all, last_one = alls[-1], ones[-1]
    if last_all["parameter_bytes_distinct"] != last_one["parameter_bytes_distinct"]:
        raise MetricUnavailable(
            "building the pipelines added parameter storage: "
            f"{last_one['parameter_bytes_distinct']} -> {last_all['parameter_bytes_distinct']} bytes"
        )
    details = {
        "rss_one": [o["rss"] for o in ones],
        "rss_all": [a["rss"] for a in alls],
        "rss_ratios": [round(r, 5) for r in ratios],
        "rss_delta_all_minus_one_bytes": int(
            statistics.median(a["rss"] for a in alls) - statistics.median(o["rss"] for o in ones)
        ),
        "pipelines_built": last_all["pipelines"],
        "parameter_bytes_distinct_one": last_one["parameter_bytes_distinct"],
        "parameter_bytes_distinct_all": last_all["parameter_bytes_distinct"],
        "parameter_bytes_if_not_shared": last_all["parameter_bytes_total"],
        "load_footprint_bytes": int(
            statistics.median(o["rss_after_load"] - o["rss_after_imports"] for o in ones)
        ),
        "repetitions": repetitions,
        "what": "fresh process per variant: engine.load() of sd15-tiny (+ inpainting UNet, pose ControlNet); "
        "'all' builds txt2img/img2img/inpaint with and without the ControlNet via ComponentSet.pipeline",
    }
    if calibrate:
        copies = probe(model_root, "copies")
        details["calibration_copies_rss_delta_bytes"] = copies["rss"] - copies["rss_after_load"]
        details["calibration_copied_bytes"] = copies["copied_bytes"]
        details["calibration"] = (
            "a deep copy of every weight-holding module raises RSS by about its parameter bytes, so a "
            "pipeline holding its own weights would show in the ratio"
        )
    return statistics.median(ratios), details
