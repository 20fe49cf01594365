"""The GPU bench's bookkeeping (``multipass_bench.gpu``): its time box, its targets, peak memory, and
the progress file a stopped run leaves behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from multipass_bench import gpu_passes, report

FAMILIES = ("sd15", "sdxl")
#: Seconds a part of the compiled variant may take (a new shape's compilation, then its repetitions).
COMPILED_PART_S = 60
#: (comparison, bound, what) per target of ``targets``.
TARGETS = {
    "engine_vs_raw_eager": (">=", 0.97, "engine it/s / raw diffusers it/s, eager, per family and pass kind"),
    "compiled_vs_raw_eager_sd15": (">=", 1.4, "compiled engine SD1.5 base it/s / raw diffusers eager it/s"),
    "lora_switch_fraction": ("<", 0.05, "LoRA activation (adapter cache) / one person pass, per engine"),
    "sdxl_engine_vs_raw": (">=", 1.0, "engine SDXL base it/s / raw diffusers SDXL it/s, eager"),
}


class Budget:
    """When optional stages are skipped: a stage does not start past ``seconds`` into the run, and a part
    of the compiled variant does not start unless ``needs`` seconds are left before ``deadline`` (None:
    no limit)."""

    def __init__(self, seconds: float | None, deadline: float | None = None):
        self.seconds = seconds
        self.deadline = deadline
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, stage: str) -> str | None:
        """Why ``stage`` is skipped, or None to run it."""
        if self.seconds is None or self.elapsed() <= self.seconds:
            return None
        return f"skipped: {stage} would start {self.elapsed():.0f} s into the run, past --budget-s {self.seconds:g}"

    def before_deadline(self, stage: str, needs: float | None = None) -> str | None:
        """Why ``stage`` is skipped (fewer than ``needs`` seconds left before the deadline), or None."""
        needs = COMPILED_PART_S if needs is None else needs
        if self.deadline is None or self.elapsed() + needs <= self.deadline:
            return None
        return (
            f"skipped: {stage} would start {self.elapsed():.0f} s into the run, less than {needs:g} s "
            f"before --deadline-s {self.deadline:g}"
        )


def targets(families: dict) -> dict:
    """Each target: its bound, the values it applies to (null + reason where not measured), met or not."""
    found = {}
    values, reasons = {}, {}
    for family in FAMILIES:
        for kind in gpu_passes.KINDS:
            figures = _get(families, family, "passes", kind)
            key = f"{family}.{kind}"
            values[key] = figures.get("engine_vs_raw") if isinstance(figures, dict) else None
            if values[key] is None:
                reasons[key] = figures if isinstance(figures, str) else f"{family} not measured"
    found["engine_vs_raw_eager"] = _target("engine_vs_raw_eager", values, reasons)
    compiled = _get(families, "sd15", "compiled")
    value = compiled.get("vs_raw_eager") if isinstance(compiled, dict) else None
    reason = compiled if isinstance(compiled, str) else "sd15 compiled variant not measured"
    found["compiled_vs_raw_eager_sd15"] = _target(
        "compiled_vs_raw_eager_sd15", {"sd15.base": value}, {} if value is not None else {"sd15.base": reason}
    )
    values, reasons = {}, {}
    for family in FAMILIES:
        for label, figures in (
            (family, _get(families, family)),
            (f"{family}.compiled", _get(families, family, "compiled")),
        ):
            value = figures.get("lora_switch_fraction") if isinstance(figures, dict) else None
            values[label] = value
            if value is None:
                text = figures.get("lora_switch") if isinstance(figures, dict) else figures
                reasons[label] = text if isinstance(text, str) else f"{label} not measured"
    found["lora_switch_fraction"] = _target("lora_switch_fraction", values, reasons)
    value = _get(families, "sdxl", "passes", "base")
    value = value.get("engine_vs_raw") if isinstance(value, dict) else None
    found["sdxl_engine_vs_raw"] = _target(
        "sdxl_engine_vs_raw",
        {"sdxl.base": value},
        {} if value is not None else {"sdxl.base": "sdxl not measured"},
    )
    return found


def _target(key: str, values: dict, reasons: dict) -> dict:
    op, bound, what = TARGETS[key]
    checks = [(v >= bound if op == ">=" else v < bound) for v in values.values() if v is not None]
    met = False if not all(checks) else (True if checks and len(checks) == len(values) else None)
    entry = {"target": f"{op} {bound:g}", "what": what, "values": values, "met": met}
    if reasons:
        entry["reasons"] = reasons
    return entry


def _get(tree: dict, *keys):
    for key in keys:
        if not isinstance(tree, dict):
            return {}
        tree = tree.get(key, {})
    return tree


def peak_memory(device: str, what: str) -> dict:
    """Peak device memory (CUDA: max_memory_allocated since the last reset) or, on CPU, peak RSS."""
    if device.startswith("cuda"):
        import torch

        return {
            "bytes": int(torch.cuda.max_memory_allocated()),
            "reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "what": f"torch.cuda.max_memory_allocated over {what}",
        }
    import resource

    return {
        "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "what": "peak RSS of the bench process so far (CPU run: no GPU memory to read)",
    }


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def write_progress(path: Path | None, result: dict) -> None:
    """The result so far, for a run that is stopped before it prints its line."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(report.dumps(result) + "\n")
    os.replace(partial, path)
