"""Upload validation: the one place pages and API decide what is an acceptable photo.

Everything is checked before anything is stored: presence, size in bytes, real type (by decoding
with Pillow, never trusting the name or the Content-Type), pixel count and shape from the header
(before any pixel is decoded), and a full decode so that truncated files are caught. The pixels
decoded here also give the thumbnail. Decoding holds one of the web process's decoding slots
(``decoding.decode_slot``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from PIL import Image

from .decoding import DecodeBusy, decode_slot
from .inference.errors import ImageShapeError, ImageTooLargeError, InvalidImageError
from .inference.image import (
    CHUNK_ROWS,
    FORMAT_EXTENSIONS,
    HIGH_BIT_DEPTH_MODES,
    apply_orientation,
    decode,
    open_image,
    orient,
    orientation,
    pixel_range,
    to_8bit,
    to_rgb,
    upright_size,
)

THUMBNAIL_SIZE = (480, 480)


class UploadError(Exception):
    """An upload we refuse; ``status`` is the HTTP status to answer with, ``reason`` a short
    name for counting refusals (``/metrics``)."""

    def __init__(
        self, message: str, status: int = 400, *, reason: str = "invalid", wait: float = 0
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.wait = wait  # seconds, for Retry-After (429, 503)


class RequestRefused(UploadError):
    """Not this file but the whole request is refused (a quota, the job rate, a busy server):
    a collection stops at it and keeps nothing, rather than listing it as a bad photo."""


@dataclass(frozen=True)
class ValidatedImage:
    format: str
    width: int  # upright
    height: int
    size_bytes: int
    thumbnail_jpeg: bytes

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


def max_upload_bytes() -> int:
    return settings.SEGWEB["MAX_UPLOAD_BYTES"]


def describe_bytes(count: float) -> str:
    return f"{count / (1024 * 1024):.1f} MB" if count >= 102_400 else f"{count / 1024:.0f} KB"


def validate_upload(upload: UploadedFile | None) -> ValidatedImage:
    """Check an uploaded photo completely; raise ``UploadError`` saying what is wrong."""
    if upload is None:
        raise UploadError(
            "No image was sent: attach a photo in the 'image' field.", reason="missing"
        )
    size = upload.size or 0
    if size == 0:
        raise UploadError("The file is empty.", reason="empty")
    limit = max_upload_bytes()
    if size > limit:
        raise UploadError(
            f"The file is {describe_bytes(size)}; the limit is {describe_bytes(limit)}.",
            413,
            reason="too_large",
        )
    upload.seek(0)
    try:
        with decode_slot(), open_image(upload, max_pixels=settings.SEGWEB["MAX_PIXELS"]) as image:
            decode(image)
            image_format = image.format
            width, height = upright_size(image)
            thumbnail = _thumbnail(image)
    except DecodeBusy as exc:
        raise RequestRefused(str(exc), 503, reason="busy", wait=exc.wait) from exc
    except ImageTooLargeError as exc:
        raise UploadError(str(exc), reason="too_many_pixels") from exc
    except ImageShapeError as exc:
        raise UploadError(str(exc), reason="bad_shape") from exc
    except InvalidImageError as exc:
        raise UploadError(str(exc), reason="not_an_image") from exc
    finally:
        upload.seek(0)
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=85, optimize=True)
    return ValidatedImage(
        format=image_format,
        width=width,
        height=height,
        size_bytes=size,
        thumbnail_jpeg=buffer.getvalue(),
    )


def _thumbnail(image: Image.Image) -> Image.Image:
    """The upright RGB thumbnail of a decoded image."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        small = _shrink_high_bit_depth(image)
        small.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
        return to_rgb(orient(small, orientation(image)))
    return _shrink(to_rgb(apply_orientation(image)))


def _shrink(image: Image.Image) -> Image.Image:
    # A cheap box-filter reduction first: LANCZOS over 40 MP would take a second.
    small = image.reduce(_factor(image)) if _factor(image) > 1 else image.copy()
    small.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    return small


def _factor(image: Image.Image) -> int:
    return max(1, min(image.width // THUMBNAIL_SIZE[0], image.height // THUMBNAIL_SIZE[1]) // 2)


def _shrink_high_bit_depth(image: Image.Image) -> Image.Image:
    """A 16/32-bit or float image reduced to 8-bit grey a band of rows at a time: the only
    extra memory is one band, never a full-size copy (a 40 MP float TIFF is 160 MB already).
    Each band is scaled by the whole image's range, so the thumbnail looks like the job's photo.
    """
    value_range = None if image.mode.startswith("I;16") else pixel_range(image)
    factor = _factor(image)
    band = factor * max(1, CHUNK_ROWS // factor)
    width, height = image.size
    small = Image.new("L", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, band):
        rows = image.crop((0, top, width, min(top + band, height)))
        small.paste(to_8bit(rows, value_range).reduce(factor), (0, top // factor))
    return small


def validate_threshold(value: object) -> float:
    """A score threshold from a form or API field: a number in [0, 1]; blank means the default."""
    if value is None or value == "":
        return settings.SEGWEB["DEFAULT_THRESHOLD"]
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        message = f"score_threshold must be a number between 0 and 1, not {value!r}."
        raise UploadError(message, reason="bad_option") from None
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
        raise UploadError(
            f"score_threshold must be between 0 and 1, not {value}.", reason="bad_option"
        )
    return threshold
