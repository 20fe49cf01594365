"""The compiled-UNet variant of the GPU bench (``multipass_bench.gpu``): compile on vs off, and LoRA hot-swap.

A second engine loads the same model with ``MULTIPASS_DIFFUSION_COMPILE`` on (inductor, torch's default
mode, hot-swap slot of the bench LoRAs' rank). Figures, per family:

* ``first_pass_seconds``: the first base pass of the compiled engine (tracing and code generation);
* ``engine_its`` compiled vs ``engine_its_uncompiled``, interleaved on the same base ``PassSpec``
  (``speedup`` = median of the paired uncompiled/compiled time ratios);
* ``lora_switch``: :func:`multipass_bench.engine_bench.lora_switch` on the compiled engine (its adapter
  cache hot-swaps into the slot), after one person pass with each LoRA compiled the person-pass size;
  ``graphs_compiled_during_switches`` counts dynamo's new graphs over those switches (0 = no recompile).
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

    def run(engine) -> float:
        sync()
        begun = time.perf_counter()
        engine.run(spec)
        sync()
        return time.perf_counter() - begun

    first = run(compiled)
    paired = interleave(lambda: run(compiled), lambda: run(plain), repetitions=repetitions)
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
        compiled, loras, repetitions=max(2, repetitions), model=name, side=size, steps=steps
    )
    cache = compiled.runtime(name).adapters
    return {
        "backend": settings.compile_backend,
        "mode": settings.compile_mode or "default",
        "hotswap_rank": lora_rank,
        "load_seconds": round(loaded, 1),
        "first_pass_seconds": round(first, 3),
        "engine_its": round(steps / statistics.median(paired.a), 3),
        "engine_its_uncompiled": round(steps / statistics.median(paired.b), 3),
        "speedup": round(1.0 / paired.median_ratio, 4),
        **paired.summary("compiled", "uncompiled"),
        "lora_switch_fraction": round(switch_fraction, 6),
        "lora_switch": switch,
        "hotswaps": getattr(cache, "swaps", None),
        "graphs_compiled_during_switches": compiled_graphs() - graphs,
    }


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
