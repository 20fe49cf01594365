"""Figures read from the stack's services' /metrics pages (Prometheus text format), for the stack bench.

Each reader takes the ``metrics_url`` the local stack's state records for a service; the sums are the
services' counters and histogram sums so far, so a figure is the difference of two reads around a job.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from multipass_bench.report import MetricUnavailable


def samples(url: str) -> Iterator[Sample]:
    """Every sample on the page at ``url``; OSError when it cannot be read."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL of our stack
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def scrape_sum(url: str | None, name: str, wanted: Callable[[dict], bool]) -> float | None:
    """The sum of the samples called ``name`` whose labels ``wanted`` accepts; None without a readable page."""
    if not url:
        return None
    try:
        return sum(sample.value for sample in samples(url) if sample.name == name and wanted(sample.labels))
    except OSError:
        return None


def scrape_engine_seconds(url: str | None) -> float | None:
    """The diffusion worker's engine seconds so far: the sum of its pass-duration histogram (every pass's
    ``Engine.run`` wall time, observed before its ``completed`` event is published); None without /metrics."""
    return scrape_sum(url, "multipass_pass_duration_seconds_sum", lambda labels: True)


def scrape_segment_model_seconds(url: str | None) -> float | None:
    """The segmentation service's model seconds so far on person masks (its phase histogram's model sum)."""
    return scrape_sum(
        url,
        "multipass_segment_phase_seconds_sum",
        lambda labels: labels.get("phase") == "model" and labels.get("kind") == "persons",
    )


def scrape_device_metrics(url: str) -> dict[str, float]:
    """The diffusion worker's device counters: busy seconds, the idle histogram's sum and count, and its
    cumulative bucket counts as ``le:<bound>`` keys."""
    wanted = {
        "multipass_diffusion_device_busy_seconds_total": "busy",
        "multipass_diffusion_device_idle_seconds_sum": "idle_sum",
        "multipass_diffusion_device_idle_seconds_count": "idle_count",
    }
    found: dict[str, float] = {}
    for sample in samples(url):
        if sample.name in wanted:
            found[wanted[sample.name]] = found.get(wanted[sample.name], 0.0) + sample.value
        elif sample.name == "multipass_diffusion_device_idle_seconds_bucket":
            key = f"le:{sample.labels['le']}"
            found[key] = found.get(key, 0.0) + sample.value
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise MetricUnavailable(f"the diffusion worker's /metrics lacks {', '.join(missing)}")
    return found


def histogram_bound(before: dict[str, float], after: dict[str, float], quantile: float) -> float | None:
    """The smallest bucket bound holding ``quantile`` of the idle waits observed between two scrapes."""
    count = after["idle_count"] - before["idle_count"]
    if count <= 0:
        return None
    bounds = sorted((float(key[3:]), key) for key in after if key.startswith("le:"))
    for bound, key in bounds:
        if after[key] - before.get(key, 0.0) >= quantile * count:
            return bound
    return None
