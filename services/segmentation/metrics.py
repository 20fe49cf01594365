"""Prometheus metrics of the segmentation service (names used by dashboards and alerts)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from multipass.metrics import LONG_BUCKETS

#: kind: persons | text | layout | faces.
SEGMENT_DURATION = Histogram(
    "multipass_segment_duration_seconds",
    "Time to answer a segmentation request, image load and mask upload included.",
    ["kind"],
    buckets=LONG_BUCKETS,
)
#: kind: persons | text; outcome: segmented | fallback (slot silhouette stood in) | empty (nothing found).
MASKS = Counter("multipass_masks_total", "Masks written, by outcome.", ["kind", "outcome"])
EMPTY = Counter(
    "multipass_segment_empty_total",
    "Masks where nothing was segmented (a prompt that matched nothing, a slot that fell back).",
)
