"""Decoding photos into the RGB images the models expect.

Only Pillow and numpy are imported here, so the web process can validate uploads with exactly the
rules the workers use, without loading torch.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImageShapeError, ImageTooLargeError, InvalidImageError

try:  # HEIC/HEIF photos (iPhones) decode through pillow-heif when it is installed.
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - optional dependency
    pass
else:
    register_heif_opener()

DEFAULT_MAX_PIXELS = 40_000_000
#: No photo is narrower than this or longer than ``MAX_ASPECT`` times its width (panoramas are
#: about 6:1). Such files are refused from the header: a 1×39,000,000 PNG is 76 KB, yet decoding
#: it cost the web process 1.2 GB and the worker crashed resizing it (cv2's ``inv_scale_x > 0``).
MIN_SIDE = 8
MAX_ASPECT = 20
#: High-bit-depth images are brought to 8 bits this many rows at a time, so that no float copy
#: of the whole image exists (a float64 copy of a 6300×6300 TIFF is 318 MB).
CHUNK_ROWS = 64

Image.init()  # register every plugin now: ``Image.open(formats=...)`` only looks at loaded ones

#: Pillow format names we accept. Anything else Pillow could open (EPS, PSD, ICO...) is refused:
#: fewer decoders reachable from an upload means fewer ways to hurt the server.
ACCEPTED_FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF") if f in Image.OPEN
)

#: Canonical file extension for each accepted format (used to name stored files).
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "HEIF": "heic",
}

_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees

Source = str | os.PathLike | bytes | BinaryIO


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an upload is, learnt by decoding it fully."""

    format: str
    width: int  # after EXIF orientation
    height: int
    mode: str

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


def open_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily, refusing from its header (before decoding) what cannot be a photo.

    Raises:
        InvalidImageError: not an image, or not a format we accept.
        ImageShapeError: a side under ``MIN_SIDE`` pixels, or longer than ``MAX_ASPECT`` times
            the other.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below and is stricter; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageTooLargeError(
            f"The image has over {bomb:.0f} megapixels (a decompression bomb?); "
            f"the limit is {max_pixels / 1e6:g} megapixels."
        ) from exc
    except FileNotFoundError as exc:
        raise InvalidImageError(f"No such file: {exc.filename}") from exc
    except IsADirectoryError as exc:
        raise InvalidImageError(f"Not a file: {exc.filename}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(_unsupported_message()) from exc
    check_shape(*image.size, max_pixels=max_pixels)
    return image


def check_shape(width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse sizes no photo has; raise ``ImageShapeError`` or ``ImageTooLargeError``."""
    if width < 1 or height < 1:
        raise InvalidImageError("The image has no pixels.")
    if min(width, height) < MIN_SIDE:
        raise ImageShapeError(
            f"The image is {width}×{height} pixels; each side must be at least {MIN_SIDE} pixels."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageShapeError(
            f"The image is {width}×{height} pixels: one side is more than {MAX_ASPECT} times "
            "the other, which no photo is."
        )
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels."
        )


def load_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a photo completely into an upright RGB image (EXIF orientation applied).

    Raises ``InvalidImageError`` (corrupt, truncated, unsupported) or ``ImageTooLargeError``.
    """
    with open_image(source, max_pixels=max_pixels) as image:
        decode(image)
        return to_rgb(apply_orientation(image))


def inspect_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Validate an upload by decoding it fully; return its format and upright size.

    Cheaper than ``load_image``: nothing is converted or rotated, only the pixel data is read so
    that truncated and corrupt files are caught.
    """
    with open_image(source, max_pixels=max_pixels) as image:
        decode(image)
        width, height = upright_size(image)
        return ImageInfo(format=image.format, width=width, height=height, mode=image.mode)


def decode(image: Image.Image) -> None:
    """Read all pixel data now, turning every way Pillow reports a bad file into our errors."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image is too large ({exc}).") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncation and corruption through a mix of exception types.
        raise InvalidImageError(
            f"The {image.format} file is damaged or truncated and cannot be decoded."
        ) from exc


def _unsupported_message() -> str:
    return (
        "The file is not an image in a supported format ("
        + ", ".join(sorted({FORMAT_EXTENSIONS[f].upper() for f in ACCEPTED_FORMATS}))
        + ")."
    )


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good photo
        return 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied."""
    width, height = image.size
    return (height, width) if _orientation(image) in _SWAPS_AXES else (width, height)


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 when it has none, or a broken one)."""
    return _orientation(image)


def apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip the image as its EXIF orientation says (no copy when there is nothing to do)."""
    if _orientation(image) in (1, 0):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as above: show the photo as stored rather than fail
        return image


def orient(image: Image.Image, exif_orientation: int) -> Image.Image:
    """Turn ``image`` upright as EXIF orientation ``exif_orientation`` says, for pixels that no
    longer carry their EXIF block (a thumbnail made from the stored pixels)."""
    method = _TRANSPOSE.get(exif_orientation)
    return image.transpose(method) if method is not None else image


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, preserving what the picture looks like.

    - transparency is composited over white (what a viewer shows);
    - 16-bit and 32-bit integer images are scaled to 8 bits (not clipped);
    - float images in [0, 1] are scaled by 255, other ranges stretched to their min..max;
    - CMYK uses the embedded ICC profile when there is one.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_BIT_DEPTH_MODES:
        return to_8bit(image).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(image: Image.Image, value_range: tuple[float, float] | None = None) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit grey (mode ``L``).

    Converted ``CHUNK_ROWS`` rows at a time into one uint8 array: the extra memory is the 8-bit
    result plus one chunk, never a float copy of the whole image. The scale (16-bit data to
    8 bits, floats in [0, 1] by 255, other ranges stretched) is chosen from ``value_range``:
    by default the image's own (``pixel_range``); a thumbnail passes its full image's.
    """
    mode = image.mode
    width, height = image.size
    if mode.startswith("I;16"):
        scale, offset = 255.0 / 65535.0, 0.0
    else:
        lo, hi = value_range or pixel_range(image)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scale, offset = 255.0, 0.0
        elif lo >= 0.0 and hi <= 255.0:
            scale, offset = 1.0, 0.0
        elif mode == "I" and lo >= 0.0 and hi <= 65535.0:  # 16-bit data in a 32-bit image
            scale, offset = 255.0 / 65535.0, 0.0
        else:
            scale, offset = (255.0 / (hi - lo) if hi > lo else 0.0), lo
    out = np.empty((height, width), dtype=np.uint8)
    for top, chunk in _row_chunks(image):
        values = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0, copy=False)
        values -= offset
        values *= scale
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        out[top : top + len(values)] = values
    return Image.fromarray(out, mode="L")


def _row_chunks(image: Image.Image):
    """(top row, float32 copy of ``CHUNK_ROWS`` rows) for the whole image, top to bottom."""
    width, height = image.size
    for top in range(0, height, CHUNK_ROWS):
        rows = image.crop((0, top, width, min(top + CHUNK_ROWS, height)))
        yield top, np.asarray(rows).astype(np.float32)


def pixel_range(image: Image.Image) -> tuple[float, float]:
    """The lowest and highest finite values of a high-bit-depth image, read in chunks."""
    lo, hi = np.inf, -np.inf
    for _, chunk in _row_chunks(image):
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    return image.convert("RGB")
