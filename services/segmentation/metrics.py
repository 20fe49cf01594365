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
#: phase: load (input images read and decoded) | model (the segmenter's own work on the model thread) |
#: store (masks or the pose image encoded and written). The model phase is compute; the others are I/O.
SEGMENT_PHASE = Histogram(
    "multipass_segment_phase_seconds",
    "Seconds of a segmentation request by phase: load (inputs read and decoded), model (the segmenter's "
    "work on the model thread), store (outputs encoded and written to the object store).",
    ["kind", "phase"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
#: kind: persons | text; outcome: segmented | fallback (slot silhouette stood in) | empty (nothing found).
MASKS = Counter("multipass_masks_total", "Masks written, by outcome.", ["kind", "outcome"])
EMPTY = Counter(
    "multipass_segment_empty_total",
    "Masks where nothing was segmented (a prompt that matched nothing, a slot that fell back).",
)
#: outcome: hit (the request's copy of the image was used) | miss (copies came, none was the image).
IMAGE_COPIES = Counter(
    "multipass_segment_image_copies_total",
    "Images to segment that came as a copy on the request (hit) or were read from the store although "
    "copies came (miss).",
    ["outcome"],
)
