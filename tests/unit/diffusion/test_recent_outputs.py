"""The worker's recent outputs: used only for the exact stored object, bounded by bytes, copies out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass_diffusion.recent_outputs import RecentOutputs


def image(seed: int, size: int = 16) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_recall_needs_the_same_bucket_key_and_sha256():
    recent = RecentOutputs(1 << 20)
    stored = image(1)
    recent.remember("jobs", "t/j/base.png", "AB" * 32, stored)
    found = recent.recall("jobs", "t/j/base.png", "ab" * 32, "RGB")
    assert found is not None and found.tobytes() == stored.tobytes()
    assert recent.recall("jobs", "t/j/base.png", "cd" * 32, "RGB") is None  # another object at that key
    assert recent.recall("other", "t/j/base.png", "ab" * 32, "RGB") is None
    assert recent.recall("jobs", "t/j/base.png", "", "RGB") is None  # no sha256: read the store


def test_copies_go_out_so_a_pass_cannot_change_the_next_ones_input():
    recent = RecentOutputs(1 << 20)
    recent.remember("jobs", "k", "ab" * 32, image(2))
    first = recent.recall("jobs", "k", "ab" * 32, "RGB")
    first.paste((0, 0, 0), (0, 0, 16, 16))
    again = recent.recall("jobs", "k", "ab" * 32, "RGB")
    assert again.tobytes() == image(2).tobytes()
    assert recent.recall("jobs", "k", "ab" * 32, "L").mode == "L"


def test_the_byte_budget_drops_the_least_recently_used():
    one = 16 * 16 * 3
    recent = RecentOutputs(2 * one)
    for number in range(3):
        recent.remember("jobs", f"k{number}", f"{number:064x}", image(number))
    assert len(recent) == 2 and recent.bytes_held == 2 * one
    assert recent.recall("jobs", "k0", f"{0:064x}", "RGB") is None
    assert recent.recall("jobs", "k2", f"{2:064x}", "RGB") is not None
    off = RecentOutputs(0)
    off.remember("jobs", "k", "ab" * 32, image(1))
    assert len(off) == 0 and off.recall("jobs", "k", "ab" * 32, "RGB") is None
