"""Side-by-side timing: interleaved repetitions of two variants, medians and paired ratios."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@dataclass
class Paired:
    """Seconds of variants A and B, repetition by repetition (index i of both ran back to back)."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """a[i] / b[i] per repetition."""
        return [x / y for x, y in zip(self.a, self.b, strict=True) if y > 0]

    @property
    def median_ratio(self) -> float:
        """The figure: the median of the paired ratios a/b."""
        return statistics.median(self.ratios)

    def summary(self, name_a: str = "a", name_b: str = "b") -> dict:
        return {
            f"{name_a}_seconds_median": round(statistics.median(self.a), 6),
            f"{name_b}_seconds_median": round(statistics.median(self.b), 6),
            f"{name_a}_seconds": [round(x, 6) for x in self.a],
            f"{name_b}_seconds": [round(x, 6) for x in self.b],
            "ratios": [round(r, 4) for r in self.ratios],
            "repetitions": len(self.a),
        }


def interleave(
    run_a: Callable[[], float | None],
    run_b: Callable[[], float | None],
    *,
    repetitions: int,
    warmup: int = 1,
) -> Paired:
    """Run A and B ``repetitions`` times each, alternating the order (AB, BA, AB, ...), after ``warmup``
    untimed runs of each. A runner returns the seconds it measured itself, or None to be timed around
    the call (so a runner can exclude its own set-up from the figure)."""
    for _ in range(warmup):
        run_a()
        run_b()
    paired = Paired()
    for index in range(repetitions):
        order = (("a", run_a), ("b", run_b)) if index % 2 == 0 else (("b", run_b), ("a", run_a))
        for name, runner in order:
            seconds, measured = timed(runner)
            value = float(measured) if isinstance(measured, (int, float)) else seconds
            getattr(paired, name).append(value)
    return paired


def median(values: list[float]) -> float:
    return statistics.median(values)


def is_positive_finite(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
