"""The compiled-UNet variant of the GPU bench (``multipass_bench.gpu``): compile on vs off, and LoRA hot-swap.

A second engine loads the same model with ``MULTIPASS_DIFFUSION_COMPILE`` on (inductor, torch's default
mode, hot-swap slot of the bench LoRAs' rank). Figures, per family:

* ``first_pass_seconds``: the first base pass of the compiled engine (tracing and code generation);
* ``engine_its`` compiled vs ``engine_its_uncompiled``, interleaved on the same base ``PassSpec``
  (``speedup`` = median of the paired uncompiled/compiled time ratios);
* ``lora_switch``: :func:`multipass_bench.engine_bench.lora_switch` on the compiled engine (its adapter
  cache hot-swaps into the slot), after one person pass with each LoRA compiled the person-pass size;
  ``graphs_compiled_during_switches`` counts dynamo's new graphs over those switches (0 = no recompile);
* ``passes``: with the GPU bench's pass scenarios (``multipass_bench.gpu_passes``: base, person, hires),
  the same compiled vs uncompiled comparison per pass kind, each after an untimed first pass that
  compiles its shapes (``first_pass_seconds``); ``budget`` (a callable naming a stage, answering a reason
  to skip it or None) lets a time-boxed run skip the later kinds and the LoRA switch with a reason.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from multipass_bench import engine_bench, workload
from multipass_bench.timing import interleave


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compiled_variant(
    plain,
    spec,
    loras: list[workload.Lora],
    *,
    name: str,
    size: int,
    steps: int,
    repetitions: int,
    lora_rank: int,
    sync,
    backend: str = "inductor",
    scenarios: dict | None = None,
    budget=None,
) -> dict:
    """Figures of the compiled engine beside ``plain`` (the uncompiled engine on the same model)."""
    from multipass_diffusion.engine import Engine

    settings = dataclasses.replace(
        plain.settings, compile=True, compile_backend=backend, compile_lora_rank=lora_rank
    )
    compiled = Engine(settings)
    started = time.perf_counter()
    compiled.load()
    loaded = time.perf_counter() - started

    def runner(engine, pass_spec, inputs=None):
        def run() -> float:
            sync()
            begun = time.perf_counter()
            engine.run(pass_spec, inputs)
            sync()
            return time.perf_counter() - begun

        return run

    first = runner(compiled, spec)()
    paired = interleave(runner(compiled, spec), runner(plain, spec), repetitions=repetitions)
    passes: dict[str, dict | str] = {}
    for kind, scenario in (scenarios or {}).items():
        if kind == "base" and scenario.spec == spec:
            figures, steps_run = paired, steps
            first_seconds = first
        else:
            reason = budget(f"compiled {kind} pass") if budget is not None else None
            if reason:
                passes[kind] = reason
                continue
            first_seconds = runner(compiled, scenario.spec, scenario.inputs)()
            figures = interleave(
                runner(compiled, scenario.spec, scenario.inputs),
                runner(plain, scenario.spec, scenario.inputs),
                repetitions=repetitions,
            )
            steps_run = scenario.steps_run
        passes[kind] = {
            "first_pass_seconds": round(first_seconds, 3),
            "engine_its": round(steps_run / statistics.median(figures.a), 3),
            "engine_its_uncompiled": round(steps_run / statistics.median(figures.b), 3),
            "speedup": round(1.0 / figures.median_ratio, 4),
            **figures.summary("compiled", "uncompiled"),
        }
    result = {
        "backend": settings.compile_backend,
        "mode": settings.compile_mode or "default",
        "hotswap_rank": lora_rank,
        "load_seconds": round(loaded, 1),
        "first_pass_seconds": round(first, 3),
        "engine_its": round(steps / statistics.median(paired.a), 3),
        "engine_its_uncompiled": round(steps / statistics.median(paired.b), 3),
        "speedup": round(1.0 / paired.median_ratio, 4),
        **paired.summary("compiled", "uncompiled"),
    }
    if passes:
        result["passes"] = passes
    reason = budget("the compiled LoRA switch") if budget is not None else None
    if reason:
        result.update(lora_switch_fraction=None, lora_switch_ms=None, lora_switch=reason)
        return result
    image = workload.scene((size, size), seed=4)
    mask = workload.box_mask((size, size), workload.area_box((size, size), 0.2))
    for lora in loras[:2]:  # the person-pass size compiles here, not during the switches
        person = workload.with_lora(
            workload.spec(
                kind="person",
                model=name,
                prompt="ohwx woman",
                denoising_strength=engine_bench.STRENGTH,
                steps=steps,
            ),
            lora,
        )
        compiled.run(person, workload.inputs(image=image, mask=mask, loras=[lora]))
    graphs = compiled_graphs()
    switch_fraction, switch = engine_bench.lora_switch(
        compiled, loras, repetitions=max(2, repetitions), model=name, side=size, steps=steps, sync=sync
    )
    cache = compiled.runtime(name).adapters
    result.update(
        lora_switch_fraction=round(switch_fraction, 6),
        lora_switch_ms=round(switch["activation_seconds_cached_median"] * 1000, 3),
        lora_switch=switch,
        hotswaps=getattr(cache, "swaps", None),
        graphs_compiled_during_switches=compiled_graphs() - graphs,
    )
    return result


def skipped(device: str, requested: str) -> str | None:
    """Why the compiled variant is not measured (None: measure it)."""
    if requested == "off":
        return "skipped: --compile off"
    if requested == "auto" and not device.startswith("cuda"):
        return (
            "skipped: the compiled variant runs on CUDA only unless --compile on (inductor on CPU builds "
            "C++ kernels for minutes, beyond a --tiny smoke run)"
        )
    return None
