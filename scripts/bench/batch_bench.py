"""Batched base passes: a job's ``num_images`` base passes as one pipeline call vs one call per image.

Engine-level, in-process, on the tiny SD1.5 model (``workload.make_engine``): the same base spec with
``images`` seeds, run as ``Engine.run_batch`` (one pipeline call, batch size N, one generator per seed)
and as N ``Engine.run`` calls, interleaved. The figure is the median of the paired ratios
sequential / batched. Each batched image is checked against its seed's unbatched image first, so the
figure never compares two different computations.
"""

from __future__ import annotations

import numpy as np

from multipass_bench import workload
from multipass_bench.report import MetricUnavailable
from multipass_bench.timing import interleave

IMAGES = 4
SIDE = 256
STEPS = 20
#: 8-bit levels a batched image may differ from its seed's own image (batched-matmul rounding).
MAX_LEVELS = 3


def batched_base_speedup(
    engine,
    *,
    images: int = IMAGES,
    side: int = SIDE,
    steps: int = STEPS,
    repetitions: int = 3,
    model: str = workload.SD15,
) -> tuple:
    """Time of ``images`` base txt2img passes run one after the other over the same passes as one batch."""
    seeds = [100 + index for index in range(images)]
    base = workload.spec(kind="base", model=model, width=side, height=side, steps=steps)

    def seeded(seed: int):
        one = type(base)()
        one.CopyFrom(base)
        one.seed = seed
        return one

    def sequential():
        return [engine.run(seeded(seed)) for seed in seeds]

    def batched():
        return engine.run_batch(base, seeds)

    worst = _worst_difference(batched(), sequential())
    if worst > MAX_LEVELS:
        raise MetricUnavailable(f"batched images differ from unbatched ones by up to {worst} levels")
    paired = interleave(sequential, batched, repetitions=repetitions, warmup=0)
    details = {
        "passes": f"{images} base txt2img passes {side}x{side}, {steps} steps, seeds {seeds[0]}..{seeds[-1]}",
        "model": "tiny random-weight SD1.5 (CPU, 1 torch thread)",
        "max_level_difference": worst,
        **paired.summary("sequential", "batched"),
    }
    return paired.median_ratio, details


def _worst_difference(batched, alone) -> int:
    worst = 0
    for together, single in zip(batched, alone, strict=True):
        a = np.asarray(together.image.convert("RGB"), dtype=np.int16)
        b = np.asarray(single.image.convert("RGB"), dtype=np.int16)
        worst = max(worst, int(np.abs(a - b).max()))
    return worst
