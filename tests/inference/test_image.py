"""Decoding: every Pillow mode becomes the right RGB, EXIF is applied, bad files are refused."""

import io

import numpy as np
import pytest
from PIL import Image

from segmentation.inference import (
    ImageTooLargeError,
    InvalidImageError,
    inspect_image,
    load_image,
)
from segmentation.inference.image import to_rgb
from tests.photos import ASTRONAUT, ROCKET


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_exif_orientation_is_applied_before_anything_else():
    # A 40x20 picture, left half red, stored with "rotate 90 CW to display" (orientation 6).
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(array), "PNG", exif=exif)

    upright = load_image(data)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright)
    assert tuple(pixels[2, 10]) == (255, 0, 0)  # the red half is now on top
    assert tuple(pixels[37, 10]) == (0, 0, 0)
    assert (inspect_image(data).width, inspect_image(data).height) == (20, 40)


def test_colour_channels_are_not_swapped():
    red = Image.new("RGB", (16, 16), (200, 10, 20))
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"):
        pixel = np.asarray(load_image(encode(red, fmt)))[8, 8]
        assert pixel[0] > 150 and pixel[2] < 60, fmt


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 65535, (255, 255, 255)),
        ("I", 200, (200, 200, 200)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 1.0, (255, 255, 255)),
    ],
)
def test_grey_modes_keep_their_brightness(mode, value, expected):
    image = Image.new(mode, (4, 4), value)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert tuple(np.asarray(rgb)[1, 1]) == expected


def test_16_bit_png_is_scaled_not_clipped():
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    image = load_image(encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)[..., 0].ravel()
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 200


def test_float_images_outside_0_1_are_stretched():
    array = np.linspace(-5, 5, 64, dtype=np.float32).reshape(8, 8)
    values = np.asarray(to_rgb(Image.fromarray(array, mode="F")))[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(np.asarray(to_rgb(rgba))[0, 0]) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    assert tuple(np.asarray(to_rgb(half))[0, 0]) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (255, 255, 255)


def test_palette_images_keep_their_colours():
    palette = Image.new("RGB", (8, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(np.asarray(load_image(encode(palette, "PNG")))[0, 0]) == (0, 128, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    pixel = np.asarray(load_image(encode(cmyk, "JPEG")))[4, 4]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(load_image(buffer.getvalue()))[0, 0]) == (255, 0, 0)


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        load_image(ASTRONAUT, max_pixels=100_000)
    assert load_image(ASTRONAUT, max_pixels=512 * 512).size == (512, 512)


def test_truncated_jpeg_is_refused():
    data = ROCKET.read_bytes()
    with pytest.raises(InvalidImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"%PDF-1.4\n" * 10],
    ids=["empty", "text", "png-header-only", "pdf"],
)
def test_corrupt_or_foreign_files_are_refused(data):
    with pytest.raises(InvalidImageError):
        load_image(data)


def test_formats_pillow_knows_but_we_do_not_accept_are_refused():
    with pytest.raises(InvalidImageError, match="not an image in a supported format"):
        load_image(encode(Image.new("RGB", (8, 8)), "ICO"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidImageError, match="No such file"):
        load_image(tmp_path / "nope.jpg")


def test_inspect_reports_format_and_extension():
    info = inspect_image(ROCKET)
    assert (info.format, info.extension, info.width, info.height) == ("JPEG", "jpg", 640, 427)


def test_a_float32_tiff_decodes_to_the_right_uint8_image(monkeypatch):
    from segmentation.inference import image as image_module

    array = np.linspace(-2.0, 6.0, 300 * 40, dtype=np.float32).reshape(40, 300)
    array[0, 0] = np.nan
    data = encode(Image.fromarray(array, mode="F"), "TIFF")
    monkeypatch.setattr(image_module, "CHUNK_ROWS", 7)  # several chunks, a short last one
    loaded = load_image(data)
    assert loaded.mode == "RGB" and loaded.size == (300, 40)
    values = np.asarray(loaded)[..., 0].astype(int)
    expected = np.clip(np.rint((np.nan_to_num(array) + 2.0) * 255 / 8.0), 0, 255)
    assert np.abs(values - expected).max() <= 1
    assert values[0, 0] == 64  # NaN counts as 0.0, stretched like the rest


def test_high_bit_depth_conversion_makes_no_whole_image_float_copy():
    import tracemalloc

    from segmentation.inference.image import to_8bit

    image = Image.fromarray(np.random.default_rng(0).random((2000, 1000), dtype=np.float32) * 9)
    tracemalloc.start()
    try:
        gray = to_8bit(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.mode == "L" and gray.size == (1000, 2000)
    # The 8-bit result (2 MB) and a few chunks; a float64 copy alone would be 16 MB.
    assert peak < 6_000_000, peak


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((7, 100), "at least 8 pixels"),
        ((100, 2001), "more than 20 times"),
        ((1, 39_000_000), "at least 8 pixels"),
    ],
)
def test_the_worker_refuses_shapes_no_photo_has_clearly(size, message):
    from segmentation.inference import ImageShapeError

    with pytest.raises(ImageShapeError, match=message):
        load_image(png_header(*size))


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header, enough to be opened (never decoded): any size, instantly."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
