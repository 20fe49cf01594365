"""Prometheus metrics of the diffusion worker (names are the dashboards' contract)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from multipass.metrics import LONG_BUCKETS

PASS_DURATION = Histogram(
    "multipass_pass_duration_seconds",
    "Wall time of one diffusion pass, cache hits included.",
    ["pass_kind"],
    buckets=LONG_BUCKETS,
)
PASS_STEPS = Counter("multipass_pass_steps_total", "Denoising steps run.")
PASSES = Counter(
    "multipass_passes_total",
    "Passes finished, by kind and outcome (succeeded, failed, cancelled, retried).",
    ["pass_kind", "outcome"],
)
LORA_CACHE_HITS = Counter("multipass_lora_cache_hits_total", "LoRA adapters found resident.")
LORA_CACHE_MISSES = Counter("multipass_lora_cache_misses_total", "LoRA adapters loaded from disk.")
MODEL_LOAD_SECONDS = Gauge(
    "multipass_model_load_seconds", "Seconds it took to load (and warm up) each model.", ["model"]
)
PASS_CACHE_HITS = Counter("multipass_pass_cache_hits_total", "Passes answered from the pass cache.")
GPU_MEMORY = Gauge("multipass_gpu_memory_bytes", "Bytes allocated on the GPU by this worker.", ["device"])
DEVICE_IDLE = Histogram(
    "multipass_diffusion_device_idle_seconds",
    "Seconds the device thread sat idle between finishing one pass and starting the next while another "
    "pass was already delivered to this worker (input fetch and hand-over time prefetching hides).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
DEVICE_BUSY = Counter(
    "multipass_diffusion_device_busy_seconds_total", "Seconds the device thread spent running passes."
)
INPUT_COPIES = Counter(
    "multipass_diffusion_input_copies_total",
    "Masks and control images of requests that carried copies: hit (read from the request's copy, no "
    "object-store read) or miss (no matching copy; read from the store).",
    ["outcome"],
)
RECENT_OUTPUTS = Counter(
    "multipass_diffusion_recent_outputs_total",
    "Input images looked up among this worker's recent outputs: hit (no object-store read, no decode) "
    "or miss (read from the store).",
    ["outcome"],
)
PASS_PHASE = Histogram(
    "multipass_diffusion_pass_phase_seconds",
    "Seconds a pass spends outside the engine, by phase: fetch (inputs read and decoded), encode (the "
    "output's PNG), upload (stored in the object store), announce (its completed event published).",
    ["phase"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RUN_AHEAD = Counter(
    "multipass_diffusion_run_ahead_total",
    "Passes started before their request arrived (PassRequest.next_pass), by outcome: used (the request "
    "came and took the result), unused (it did not come here in time: the gateway sent it elsewhere, or it "
    "differed), yielded (stopped for another pass wanting the device, a job cancel or the worker stopping), "
    "failed.",
    ["outcome"],
)


PASS_REDELIVERIES = Counter(
    "multipass_pass_redeliveries_total",
    "Pass requests taken again by a worker (delivery 2 and later): a nak'ed retry, or a pass whose worker "
    "died or stalled past the ack wait, by kind.",
    ["pass_kind"],
)


def count_delivery(kind: str, num_delivered: int) -> None:
    """Count a delivery of a pass request that is not its first."""
    if num_delivered > 1:
        PASS_REDELIVERIES.labels(pass_kind=kind or "unknown").inc()


def count_failed_pass(kind: str, *, cancelled: bool, retried: bool) -> None:
    """Count a pass a worker gave up on: cancelled, retried (nak'ed for another delivery) or failed."""
    outcome = "cancelled" if cancelled else "retried" if retried else "failed"
    PASSES.labels(pass_kind=kind or "unknown", outcome=outcome).inc()
