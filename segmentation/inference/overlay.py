"""The overlay picture, in the look segweb started with: tinted masks, boxes, labels and scores.

The tint is the tutorial's ``cv2.addWeighted(image, 1, colour_mask, 0.5, 0)``: each mask pixel gets
half its class colour added. The tutorial built a full-size colour image per instance and blended
the whole picture each time (20 instances on 12 MP: 1.4 s); here each instance adds its colour in
place, only where its mask is (29 ms), with identical pixels (every palette value is even, so
half a colour is a whole number and no rounding differs).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from .coco import COCO_LABELS
from .detection import Detection
from .image import apply_orientation, to_rgb

ALPHA = 0.5

#: A qualitative palette with enough contrast on photos (even values: see above); a class always
#: gets the same colour.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 24, 74),
    (60, 180, 74),
    (254, 224, 24),
    (0, 130, 200),
    (244, 130, 48),
    (144, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 244, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 254),
    (170, 110, 40),
    (254, 250, 200),
    (128, 0, 0),
    (170, 254, 194),
    (128, 128, 0),
    (254, 214, 180),
    (0, 0, 128),
    (128, 128, 128),
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(label: str) -> tuple[int, int, int]:
    """Stable RGB colour for a class name (same on every job and every machine)."""
    try:
        index = COCO_LABELS.index(label)
    except ValueError:
        index = zlib.crc32(label.encode())
    return PALETTE[index % len(PALETTE)]


def render_overlay(
    image: Image.Image, detections: Sequence[Detection], *, alpha: float = ALPHA
) -> Image.Image:
    """Draw ``detections`` over ``image``; returns a new RGB image of the same (upright) size.

    Each mask gets ``alpha`` times its class colour added, then boxes and "label score" tags are
    drawn on top, highest score last so that it stays readable where instances overlap.
    """
    rgb = to_rgb(apply_orientation(image))
    canvas = np.array(rgb)  # a writable copy
    height, width = canvas.shape[:2]
    ordered = sorted(detections, key=lambda d: d.score)
    for det in ordered:
        if det.image_size != (width, height):
            raise ValueError(f"detection is for a {det.image_size} image, not {(width, height)}")
        _tint(canvas, det, class_colour(det.label), alpha)
    style = _Style.for_size(width, height)
    for det in ordered:
        _draw_box_and_tag(canvas, det, class_colour(det.label), style)
    return Image.fromarray(canvas, mode="RGB")


def _tint(canvas: np.ndarray, det: Detection, colour: tuple[int, int, int], alpha: float) -> None:
    if det.area == 0:
        return
    x0, y0, x1, y1 = det.mask_box
    region = canvas[y0:y1, x0:x1]  # a view: cv2.add writes straight into the canvas
    tint = (colour[0] * alpha, colour[1] * alpha, colour[2] * alpha, 0.0)
    cv2.add(region, tint, dst=region, mask=det.mask.view(np.uint8))


class _Style:
    """Line and text sizes that stay legible from thumbnails to 50 MP photos."""

    def __init__(self, line: int, font_scale: float, text_thickness: int, pad: int) -> None:
        self.line, self.font_scale, self.text_thickness, self.pad = (
            line,
            font_scale,
            text_thickness,
            pad,
        )

    @classmethod
    def for_size(cls, width: int, height: int) -> _Style:
        short = min(width, height)
        font_scale = max(0.4, short / 800)
        return cls(
            line=max(1, round(short / 300)),
            font_scale=font_scale,
            text_thickness=max(1, round(font_scale * 1.6)),
            pad=max(2, round(font_scale * 4)),
        )


def _draw_box_and_tag(
    canvas: np.ndarray, det: Detection, colour: tuple[int, int, int], style: _Style
) -> None:
    height, width = canvas.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in det.box)
    x2, y2 = max(x1, min(x2, width - 1)), max(y1, min(y2, height - 1))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, style.line, cv2.LINE_AA)
    text = f"{det.label} {det.score:.2f}"
    (tw, th), baseline = cv2.getTextSize(text, _FONT, style.font_scale, style.text_thickness)
    tag_h = th + baseline + 2 * style.pad
    tag_w = tw + 2 * style.pad
    # Above the box when there is room, else just inside its top edge; never off the image.
    tx = min(max(x1, 0), max(width - tag_w, 0))
    ty = y1 - tag_h if y1 - tag_h >= 0 else min(y1, max(height - tag_h, 0))
    cv2.rectangle(canvas, (tx, ty), (tx + tag_w, ty + tag_h), colour, cv2.FILLED)
    ink = (0, 0, 0) if _luminance(colour) > 140 else (255, 255, 255)
    cv2.putText(
        canvas,
        text,
        (tx + style.pad, ty + style.pad + th),
        _FONT,
        style.font_scale,
        ink,
        style.text_thickness,
        cv2.LINE_AA,
    )


def _luminance(colour: tuple[int, int, int]) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b
