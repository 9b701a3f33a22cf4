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

from .errors import ImageTooLargeError, InvalidImageError

try:  # HEIC/HEIF photos (iPhones) decode through pillow-heif when it is installed.
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - optional dependency
    pass
else:
    register_heif_opener()

DEFAULT_MAX_PIXELS = 40_000_000

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
    """Open an image lazily, refusing unsupported formats and too many pixels before decoding.

    Raises:
        InvalidImageError: not an image, or not a format we accept.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below and is stricter; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image is too large ({exc}).") from exc
    except FileNotFoundError as exc:
        raise InvalidImageError(f"No such file: {exc.filename}") from exc
    except IsADirectoryError as exc:
        raise InvalidImageError(f"Not a file: {exc.filename}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(_unsupported_message()) from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels."
        )
    return image


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
        width, height = image.size
        if _orientation(image) in _SWAPS_AXES:
            width, height = height, width
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


def apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip the image as its EXIF orientation says (no copy when there is nothing to do)."""
    if _orientation(image) in (1, 0):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as above: show the photo as stored rather than fail
        return image


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
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _to_8bit(np.asarray(image), mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
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


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scale, offset = 255.0 / 65535.0, 0.0
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        scale, offset = 255.0, 0.0
    elif lo >= 0.0 and hi <= 255.0:
        scale, offset = 1.0, 0.0
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:  # 16-bit data held in a 32-bit image
        scale, offset = 255.0 / 65535.0, 0.0
    else:
        scale, offset = (255.0 / (hi - lo) if hi > lo else 0.0), lo
    return np.clip(np.rint((values - offset) * scale), 0, 255).astype(np.uint8)


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
