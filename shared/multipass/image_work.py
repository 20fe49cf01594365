"""Encoding and decoding from async code: small images on the event loop's own thread, large ones in a worker
thread.

Handing an image to a thread and waking the loop when it is done costs about a millisecond on a busy
machine, more than encoding or decoding a small image (a 256x256 PNG: 0.2-0.9 ms); a large one (a 1024x1024
photo: tens of milliseconds) would hold every other coroutine of the process, so it goes to a thread.
"""

from __future__ import annotations

import asyncio
import io
import warnings

from PIL import Image

from multipass.images import decode_image, encode_png

#: Images of at most this many pixels are encoded and decoded on the calling thread.
INLINE_PIXELS = 256 * 256


async def encode_png_async(image: Image.Image, compress_level: int = 6) -> bytes:
    """:func:`multipass.images.encode_png`, in a thread unless the image is small."""
    if image.width * image.height <= INLINE_PIXELS:
        return encode_png(image, compress_level)
    return await asyncio.to_thread(encode_png, image, compress_level)


def _declared_pixels(data: bytes) -> int | None:
    """Width x height from the image's header (no pixels decoded); None when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Exception:  # noqa: BLE001 - anything unreadable is decode_image's to refuse, in a thread
        return None
    return width * height


async def decode_image_async(data: bytes, **options) -> Image.Image:
    """:func:`multipass.images.decode_image` (same checks, same errors), in a thread unless the header
    declares a small image."""
    pixels = _declared_pixels(data)
    if pixels is not None and pixels <= INLINE_PIXELS:
        return decode_image(data, **options)
    return await asyncio.to_thread(decode_image, data, **options)
