"""Benchmarks of Multipass (``make bench`` = ``python -m multipass_bench``; docs/BENCHMARKS.md).

Every figure is a ratio or a rate measured side by side in one run: the two variants of a comparison
are interleaved (A B, B A, A B, ...) after a warm-up of each, and the figure is the median of the
paired ratios, so that load from other processes on a shared machine affects both sides alike.
Absolute seconds are reported beside the ratios for context only; no test asserts a timing.

Modules: ``timing`` (interleaving, medians), ``report`` (machine, versions, the JSON report and its
checks), ``workload`` (tiny models, engines, specs, masks, LoRAs), ``engine_bench`` (crop vs whole
image, LoRA switching, pass cache), ``memory_bench`` + ``memory_probe`` (shared components),
``parallel_bench`` (two person passes in two processes), ``stack_bench`` (the full local stack),
``control_plane`` + ``standin_worker`` (gateway throughput with an instant worker), ``batch_bench``
(a job's base passes as one batch vs one by one), ``gpu`` (real
architectures on CUDA; ``scripts/bench_gpu.py``) with ``gpu_models`` (the SD1.5 / SDXL configs, random
weights), ``gpu_passes`` (raw diffusers vs the engine per pass kind) and ``gpu_report`` (targets, JSON), ``runner`` (all of it, one JSON object),
``bench_cmd`` (``multipass bench``, a plugin of the ``multipass.cli`` entry points).

The harness measures the whole product, so it depends on the services, the client library and the
developer tooling (``multipass_dev``: tiny models, the local stack); nothing depends on it.
"""

from __future__ import annotations

#: The figures of ``make bench``, in report order.
METRIC_KEYS = (
    "orchestration_overhead_ratio",
    "control_plane_passes_per_s",
    "crop_vs_full_speedup",
    "lora_switch_fraction",
    "pass_cache_speedup",
    "shared_components_memory_ratio",
    "parallel_persons_speedup",
    "batched_base_speedup",
)
