"""Small images are encoded and decoded on the event loop's thread, large ones in a worker thread; both
give what the synchronous functions give, errors included."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from multipass import image_work
from multipass.errors import InvalidInput
from multipass.images import decode_image, encode_png


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def threads_used(monkeypatch) -> list[str]:
    """Names of the threads the encoder and decoder ran on."""
    seen: list[str] = []

    def recording(fn):
        def run(*args, **kwargs):
            seen.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(image_work, "encode_png", recording(encode_png))
    monkeypatch.setattr(image_work, "decode_image", recording(decode_image))
    return seen


async def test_a_small_image_stays_on_the_loop_thread_and_a_large_one_goes_to_a_worker_thread(threads_used):
    here = threading.current_thread().name
    small, large = noise(256, 256), noise(300, 300)
    small_png = await image_work.encode_png_async(small, 1)
    large_png = await image_work.encode_png_async(large, 1)
    assert small_png == encode_png(small, 1) and large_png == encode_png(large, 1)
    decoded = [await image_work.decode_image_async(data) for data in (small_png, large_png)]
    assert [
        np.array_equal(np.asarray(d), np.asarray(i)) for d, i in zip(decoded, (small, large), strict=True)
    ] == [
        True,
        True,
    ]
    assert [name == here for name in threads_used] == [True, False, True, False]


async def test_bytes_that_are_no_image_get_the_same_precise_error(threads_used):
    with pytest.raises(InvalidInput) as caught:
        await image_work.decode_image_async(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, field="spec.mask")
    assert caught.value.violations[0].field == "spec.mask"
    assert threads_used and threads_used[0] != threading.current_thread().name  # unreadable: in a thread
    # A header declaring a huge image is not decoded on the loop either (decode_image refuses it).
    bomb = Image.new("L", (8000, 8000))
    with pytest.raises(InvalidInput):
        await image_work.decode_image_async(encode_png(bomb, 9), max_pixels=1000)
