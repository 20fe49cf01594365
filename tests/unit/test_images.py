"""Decoding untrusted image bytes: refusals name the field, accepted images come out as 8-bit RGB/L."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from multipass.errors import InvalidInput
from multipass.images import decode_image, encode_png, sha256_hex, sniff_format


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds a few bytes (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def violation(error: pytest.ExceptionInfo[InvalidInput]) -> tuple[str, str]:
    (only,) = error.value.violations
    return only.field, only.description


def test_plain_png_round_trips_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = decode_image(encode_png(Image.fromarray(pixels, "RGB")))
    assert image.mode == "RGB" and image.size == (7, 5)
    assert np.array_equal(np.asarray(image), pixels)


def test_encode_png_is_deterministic():
    image = Image.new("RGB", (9, 4), (10, 20, 30))
    assert sha256_hex(encode_png(image)) == sha256_hex(encode_png(image.copy()))


def test_png_levels_trade_bytes_for_speed_on_the_same_pixels():
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    fast, small = encode_png(photo, compress_level=1), encode_png(photo, compress_level=9)
    assert fast != small and len(fast) > len(small)
    assert np.array_equal(np.asarray(decode_image(fast)), np.asarray(photo))
    assert np.array_equal(np.asarray(decode_image(small)), np.asarray(photo))
    assert encode_png(photo, compress_level=1) == fast  # deterministic per level


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1"])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (300, 2), (2, 300), (257, 129)])
def test_every_mode_and_shape_round_trips_through_pillow(mode, size):
    rng = np.random.default_rng(sum(size))
    source = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    data = encode_png(source, compress_level=1)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    reread = Image.open(io.BytesIO(data))
    reread.load()
    assert reread.mode == source.mode and reread.size == source.size
    assert reread.tobytes() == source.tobytes()


def test_smooth_pixels_compress_and_noise_is_stored():
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    pillow = io.BytesIO()
    photo.save(pillow, format="PNG", compress_level=1)
    ours = encode_png(photo, compress_level=1)
    assert len(ours) <= 1.05 * len(pillow.getvalue())  # the Up filter compresses photos as well as Pillow
    assert len(ours) < 0.7 * photo.width * photo.height * 3
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB")
    stored = encode_png(noise, compress_level=6)
    assert stored == encode_png(noise, compress_level=0)  # incompressible: zlib's stored blocks
    assert np.array_equal(np.asarray(decode_image(stored)), np.asarray(noise))


def test_truncated_png_is_refused_naming_the_field():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise, "RGB"))
    with pytest.raises(InvalidInput) as caught:
        decode_image(data[: len(data) // 2], field="input_image")
    field, description = violation(caught)
    assert field == "input_image"
    assert "truncated" in description and "PNG" in description


def test_non_image_bytes_are_refused():
    with pytest.raises(InvalidInput) as caught:
        decode_image(b"<html>not an image</html>", field="mask_image")
    field, description = violation(caught)
    assert field == "mask_image"
    assert "is not an image" in description and "25 bytes" in description
    assert sniff_format(b"<html>") is None


def test_image_over_the_pixel_cap_is_refused_before_decoding():
    data = png_header_only(5000, 5000)
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, max_pixels=4096 * 4096)
    assert "5000x5000" in violation(caught)[1]


def test_decompression_bomb_is_refused():
    # Far beyond Pillow's own bomb limit: refused at open, before any pixel is decoded.
    data = png_header_only(60000, 60000)
    assert len(data) < 200
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, max_pixels=60000 * 60000)
    assert "decompression bomb" in violation(caught)[1]


def test_sixteen_bit_png_is_scaled_to_eight_bit():
    ramp = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = png_bytes(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    gray = decode_image(data, mode="L")
    assert gray.mode == "L"
    assert np.asarray(gray).tolist() == [[0, 127, 255]]
    assert decode_image(data).mode == "RGB"


def test_cmyk_jpeg_becomes_rgb():
    data = jpeg_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))  # pure red in CMYK
    image = decode_image(data)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_rgba_is_composited_over_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    image = decode_image(png_bytes(rgba))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)


def test_a_mask_reads_transparent_pixels_as_keep_and_alpha_can_be_kept():
    canvas = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    canvas.putpixel((1, 0), (255, 255, 255, 255))  # painted
    canvas.putpixel((2, 0), (255, 255, 255, 128))  # half painted (an anti-aliased edge)
    mask = decode_image(png_bytes(canvas), mode="L")
    assert mask.mode == "L" and list(mask.getdata())[:2] == [0, 255]
    assert 120 <= mask.getpixel((2, 0)) <= 136
    la = Image.new("LA", (1, 1), (255, 0))
    assert decode_image(png_bytes(la), mode="L").getpixel((0, 0)) == 0
    kept = decode_image(png_bytes(canvas), keep_alpha=True)
    assert kept.mode == "RGBA" and kept.getpixel((0, 0))[3] == 0 and kept.getpixel((1, 0)) == (255,) * 4
    opaque = Image.new("RGB", (1, 1), (1, 2, 3))
    assert decode_image(png_bytes(opaque), keep_alpha=True).mode == "RGB"


def test_exif_rotated_jpeg_is_normalised_upright():
    # Stored 40x20, left half red and right half blue, with orientation 6 ("rotate 90 clockwise to view").
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(jpeg_bytes(stored, exif=exif.tobytes()))
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_palette_with_transparency_and_gif_are_accepted():
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    assert decode_image(png_bytes(palette)).getpixel((1, 1)) == (255, 255, 255)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(buffer, format="GIF")
    assert decode_image(buffer.getvalue()).getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"RIFF\x00\x00\x00\x00WEBP", "WEBP"),
        (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"BM", "BMP"),
    ],
)
def test_sniff_format_recognises_magic_bytes(prefix, kind):
    assert sniff_format(prefix + b"\x00" * 16) == kind


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_an_image_pillow_refuses_names_its_size_and_our_limit(side):
    with pytest.raises(InvalidInput) as caught:
        decode_image(png_header_only(side, side), field="input_image", max_pixels=4096 * 4096)
    assert violation(caught) == (
        "input_image",
        f"is {side * side} pixels, refused as a decompression bomb; at most 16777216 allowed",
    )
    assert caught.value.metadata["maxPixels"] == "16777216"


def test_a_limit_above_pillows_own_is_reported_as_pillows():
    with pytest.raises(InvalidInput) as caught:
        decode_image(png_header_only(60000, 60000), max_pixels=60000 * 60000)
    assert violation(caught)[1].endswith(f"at most {Image.MAX_IMAGE_PIXELS} allowed")
