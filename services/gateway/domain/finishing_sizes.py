"""The sizes the finishing passes make, planned the way the diffusion workers make them.

Workers never make an image longer than :data:`MAX_OUTPUT_SIDE` a side: hires shrinks its target (same
aspect, multiples of 8) and the upscaler caps its result (same aspect) under it, and a pass spec asking for
more is refused as invalid. The planner sizes those passes with the same rules, so a scene at the size
cap with ``hires_fix`` and ``super_resolution`` runs through, and the planned sizes are the outputs'.
"""

from __future__ import annotations

import math

#: The longest side a diffusion worker makes or accepts in a pass spec.
MAX_OUTPUT_SIDE = 4096
SIZE_MULTIPLE = 8


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """``width x height`` times ``scale``, shrunk so the long side fits, rounded down to multiples of 8."""
    scaled_width, scaled_height = width * scale, height * scale
    shrink = min(1.0, MAX_OUTPUT_SIDE / max(scaled_width, scaled_height))
    return _down_to_multiple(scaled_width * shrink), _down_to_multiple(scaled_height * shrink)


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """``width x height`` times ``scale`` (rounded), shrunk (rounded down) so the long side fits."""
    scaled = [max(1, math.floor(side * scale + 0.5)) for side in (width, height)]
    longest = max(scaled)
    if longest <= MAX_OUTPUT_SIDE:
        return scaled[0], scaled[1]
    shrink = MAX_OUTPUT_SIDE / longest
    return max(1, math.floor(scaled[0] * shrink)), max(1, math.floor(scaled[1] * shrink))


def _down_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, int(math.floor(value)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
