"""Decoding untrusted image bytes safely and encoding images for storage.

Every service that reads an image it did not write itself goes through :func:`decode_image`: it sniffs
the content, refuses decompression bombs and oversized images before decoding pixels, applies EXIF
orientation, and normalises modes (CMYK, 16-bit, palette, alpha) to 8-bit RGB or L.

Transparency means "nothing here": a photo's transparent pixels become white, a mask's (mode ``L``, white =
repaint) become black, so a mask painted white on a transparent canvas repaints only what was painted.
Uploads keep their alpha channel (``keep_alpha``) so that an upload can serve as either.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

from multipass.errors import InvalidInput, Reason, Violation

#: Default cap on width*height of any image we accept (about 24 megapixels).
DEFAULT_MAX_PIXELS = 4096 * 6144
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def sniff_format(data: bytes) -> str | None:
    """The image format from the magic bytes, or None when the bytes are not an image we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def decode_image(
    data: bytes,
    *,
    field: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mode: str = "RGB",
    keep_alpha: bool = False,
) -> Image.Image:
    """Decode untrusted bytes into an 8-bit ``mode`` image, or raise InvalidInput naming ``field``.
    ``keep_alpha``: an image with transparency comes back as 8-bit RGBA instead."""
    kind = sniff_format(data)
    if kind is None:
        raise InvalidInput.of(
            [
                Violation(
                    field, f"is not an image ({len(data)} bytes; accepted: {', '.join(ACCEPTED_FORMATS)})"
                )
            ]
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise InvalidInput.of(
                    [
                        Violation(
                            field,
                            f"is {width}x{height} = {width * height} pixels; at most {max_pixels} allowed",
                        )
                    ],
                    reason=Reason.IMAGE_TOO_LARGE,
                    metadata={"maxPixels": str(max_pixels)},
                )
            image.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses such an image before it tells its size; its message has the pixel count. Its own
        # bound (warned of above, refused at twice) may be lower than ``max_pixels``.
        allowed = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        counted = _BOMB_PIXELS.search(str(error))
        size = f"is {counted[1]} pixels" if counted else f"has more than {allowed} pixels"
        raise InvalidInput.of(
            [Violation(field, f"{size}, refused as a decompression bomb; at most {allowed} allowed")],
            reason=Reason.IMAGE_TOO_LARGE,
            metadata={"maxPixels": str(allowed)},
        ) from error
    except UnidentifiedImageError as error:
        # Pillow's message names the stream object (with its memory address), not the problem.
        raise InvalidInput.of(
            [Violation(field, f"is a damaged or truncated {kind} image: {kind} decoder could not read it")]
        ) from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidInput.of(
            [Violation(field, f"is a damaged or truncated {kind} image: {error}")]
        ) from error
    return normalise(image, mode, keep_alpha=keep_alpha)


#: What a transparent pixel becomes, by target mode: white in a photo, black (keep) in a mask.
_TRANSPARENT_AS = {"L": (0, 0, 0, 255)}
_TRANSPARENT_DEFAULT = (255, 255, 255, 255)


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def normalise(image: Image.Image, mode: str = "RGB", *, keep_alpha: bool = False) -> Image.Image:
    """Apply EXIF orientation and convert any mode (CMYK, I;16, P, RGBA, LA) to 8-bit ``mode``; with
    ``keep_alpha``, an image with transparency to 8-bit RGBA."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).clip(0, 255).astype("uint8"), "L")
    if has_transparency(image):
        rgba = image.convert("RGBA")
        if keep_alpha:
            return rgba
        background = Image.new("RGBA", rgba.size, _TRANSPARENT_AS.get(mode, _TRANSPARENT_DEFAULT))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


#: PNG colour types of the modes :func:`encode_png` writes itself (others go through Pillow).
_PNG_COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}
#: Bytes of filtered rows compressed as a sample to tell whether the image compresses at all.
_SAMPLE_BYTES = 32 * 1024
#: A sample that zlib shrinks by less than 15% is stored rather than compressed: compressing such pixels
#: costs more time (about 30 MB/s at level 1) than sending the few bytes it saves.
_INCOMPRESSIBLE = 0.85


def encode_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """Lossless PNG bytes (deterministic for the same pixels and level).

    L, RGB and RGBA images are written here: every row with PNG's "Up" filter (one vectorised
    subtraction, where Pillow tries five filters per row) and one zlib stream at ``compress_level``.
    Level 1 encodes a 512x512 photo in about 16 ms instead of Pillow's 41 ms at its own level 1, for
    the same size within 2%; level 6 is zlib's balance. Pixels that do not compress (noise, the tiny
    models' outputs) are stored: a 32 KiB sample that zlib shrinks by less than 3% decides it, since
    compressing them costs milliseconds and saves nothing. Other modes go through Pillow.
    """
    layout = _PNG_COLOUR_TYPES.get(image.mode)
    if layout is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False, compress_level=compress_level)
        return buffer.getvalue()
    import numpy as np

    colour_type, channels = layout
    width, height = image.size
    rows = np.asarray(image, dtype=np.uint8).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # Up: each byte minus the byte above it
    filtered[0, 0] = 0  # the first row has nothing above it: None
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    raw = filtered.tobytes()
    level = compress_level
    if level > 0:
        sample = raw[:_SAMPLE_BYTES]
        if len(raw) > _SAMPLE_BYTES and len(zlib.compress(sample, 1)) > _INCOMPRESSIBLE * len(sample):
            level = 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(raw, level)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
