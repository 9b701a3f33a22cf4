"""The overlay picture: each instance's mask tinted and outlined in its own colour, with a tag.

Colours are per *instance*: each class gets a hue family (classes in the order they first appear,
best score first, so the classes of one photo are far apart on the colour wheel), and the
instances of a class get distinct hues and lightnesses within it: five horses side by side are
five oranges, not one orange blob. ``palette`` is the single source of those colours; the job
page's viewer receives them from it, so the browser and the PNG always agree.

Tags ("horse 0.93") are sized for the photo (about 2 % of its long side, so they stay legible
when a 12 MP photo is shown on a phone), placed where they overlap no other tag and stay inside
the image; a tag that finds no free place is left out (the viewer shows every instance).

OpenCV is imported only to draw: the web process reads the palette for every job page and
must stay light (tests/test_project.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detection import Detection
from .image import apply_orientation, to_rgb

RGB = tuple[int, int, int]

ALPHA = 0.45  # mask tint opacity

#: Base hues (degrees) of the first classes of a photo: far apart, and easy to name.
CLASS_HUES = (210, 28, 135, 330, 270, 52, 180, 0, 95, 300, 240, 160)
#: Hue steps (degrees) and lightnesses that tell the instances of one class apart.
INSTANCE_HUE_STEPS = (0, 14, -14, 28, -28, 7, -7, 21, -21)
INSTANCE_LIGHTNESS = (0.52, 0.40, 0.64)
SATURATION = 0.80


@dataclass(frozen=True)
class Palette:
    instances: list[RGB]  # one per detection, in the order given
    classes: dict[str, RGB]  # each class's base colour (legend, chips)


def palette(labels: Sequence[str]) -> Palette:
    """Colours for detections whose labels are ``labels``, best score first.

    Prefix-stable: the colours of the first ``n`` detections do not depend on what follows, so
    raising a job's threshold (which removes detections from the end) changes no colour.
    """
    class_hue: dict[str, float] = {}
    seen: dict[str, int] = {}
    instances: list[RGB] = []
    for label in labels:
        if label not in class_hue:
            k = len(class_hue)
            class_hue[label] = CLASS_HUES[k] if k < len(CLASS_HUES) else (k * 137.508) % 360
        j = seen.get(label, 0)
        seen[label] = j + 1
        step = INSTANCE_HUE_STEPS[j % len(INSTANCE_HUE_STEPS)]
        lightness = INSTANCE_LIGHTNESS[(j // len(INSTANCE_HUE_STEPS)) % len(INSTANCE_LIGHTNESS)]
        instances.append(hsl_to_rgb(class_hue[label] + step, SATURATION, lightness))
    classes = {
        label: hsl_to_rgb(hue, SATURATION, INSTANCE_LIGHTNESS[0])
        for label, hue in class_hue.items()
    }
    return Palette(instances=instances, classes=classes)


def hsl_to_rgb(hue: float, saturation: float, lightness: float) -> RGB:
    """HSL (hue in degrees, the others in [0, 1]) to 8-bit RGB."""
    hue = (hue % 360) / 360
    if saturation == 0:
        v = _byte(lightness)
        return (v, v, v)
    q = (
        lightness * (1 + saturation)
        if lightness < 0.5
        else lightness + saturation * (1 - lightness)
    )
    p = 2 * lightness - q
    return tuple(_byte(_hue_channel(p, q, hue + shift)) for shift in (1 / 3, 0, -1 / 3))


def _hue_channel(p: float, q: float, t: float) -> float:
    t %= 1
    if t < 1 / 6:
        return p + (q - p) * 6 * t
    if t < 1 / 2:
        return q
    if t < 2 / 3:
        return p + (q - p) * (2 / 3 - t) * 6
    return p


def _byte(value: float) -> int:
    return max(0, min(255, math.floor(value * 255 + 0.5)))


def hex_colour(colour: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def relative_luminance(colour: RGB) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def linear(c: int) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: RGB, b: RGB) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def ink_for(background: RGB) -> RGB:
    """Black or white text, whichever contrasts more (never below 4.5:1 on any colour)."""
    black, white = (0, 0, 0), (255, 255, 255)
    return (
        black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white
    )


# --- Rendering --------------------------------------------------------------------------------


def render_overlay(
    image: Image.Image, detections: Sequence[Detection], *, alpha: float = ALPHA
) -> Image.Image:
    """Draw ``detections`` over ``image``; returns a new RGB image of the same (upright) size.

    Colours come from ``palette`` over the detections sorted best first. Masks are tinted with
    ``alpha`` of their colour and outlined, lowest score first so the best stays on top; then
    the tags, best first, each where it overlaps no earlier tag.
    """
    rgb = to_rgb(apply_orientation(image))
    canvas = np.array(rgb)  # a writable copy
    height, width = canvas.shape[:2]
    best_first = sorted(detections, key=lambda d: -d.score)
    colours = palette([d.label for d in best_first]).instances
    for det in best_first:
        if det.image_size != (width, height):
            raise ValueError(f"detection is for a {det.image_size} image, not {(width, height)}")
    style = _Style.for_size(width, height)
    for det, colour in reversed(list(zip(best_first, colours, strict=True))):
        _tint(canvas, det, colour, alpha, style.line)
    out = Image.fromarray(canvas, mode="RGB")
    _draw_tags(out, best_first, colours, style)
    return out


def _tint(canvas: np.ndarray, det: Detection, colour: RGB, alpha: float, line: int) -> None:
    import cv2

    x0, y0, x1, y1 = det.mask_box
    if det.area == 0:
        bx0, by0, bx1, by1 = (round(v) for v in det.box)
        cv2.rectangle(canvas, (bx0, by0), (bx1, by1), colour, line, cv2.LINE_AA)
        return
    region = canvas[y0:y1, x0:x1]  # a view: every change lands in the canvas
    mask = det.mask
    # (1 - alpha) * pixel + alpha * colour, written only where the mask is: the cost stays in
    # the instance's box, never the whole photo.
    mask8 = mask.view(np.uint8)
    kept = cv2.multiply(region, (1 - alpha, 1 - alpha, 1 - alpha, 0))
    cv2.add(kept, (*(alpha * c for c in colour), 0), dst=region, mask=mask8)
    contours, _ = cv2.findContours(mask8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(region, contours, -1, colour, line, cv2.LINE_8)  # AA: 3x the time


@dataclass(frozen=True)
class _Style:
    """Outline width and tag size for a photo: legible from thumbnails to 50 MP photos."""

    line: int
    font_px: int
    pad: int

    @classmethod
    def for_size(cls, width: int, height: int) -> _Style:
        long_side = max(width, height)
        font_px = max(11, round(long_side * 0.02))
        return cls(line=max(1, round(long_side / 700)), font_px=font_px, pad=max(2, font_px // 4))


def _draw_tags(
    out: Image.Image, detections: Sequence[Detection], colours: Sequence[RGB], style: _Style
) -> None:
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=style.font_px)
    placed: list[tuple[int, int, int, int]] = []
    for det, colour in zip(detections, colours, strict=True):
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = font.getbbox(text)
        tag_w = right - left + 2 * style.pad
        tag_h = style.font_px + 2 * style.pad
        spot = _free_spot(det.box, tag_w, tag_h, out.size, placed)
        if spot is None:
            continue
        placed.append(spot)
        x, y = spot[0], spot[1]
        draw.rounded_rectangle(spot, radius=style.pad, fill=colour)
        baseline_offset = (style.font_px - (bottom - top)) // 2 - top
        draw.text(
            (x + style.pad - left, y + style.pad + baseline_offset), text, ink_for(colour), font
        )


def _free_spot(
    box: Sequence[float],
    tag_w: int,
    tag_h: int,
    image_size: tuple[int, int],
    placed: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int] | None:
    """The first candidate place for a tag, kept inside the image, that overlaps no placed tag."""
    width, height = image_size
    if tag_w > width or tag_h > height:
        return None
    x1, y1, x2, y2 = (round(v) for v in box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    candidates = [
        (x1, y1 - tag_h),  # above the top-left corner
        (x1, y1),  # inside it
        (x2 - tag_w, y1 - tag_h),  # above the top-right corner
        (x2 - tag_w, y1),
        (x1, y2),  # below the bottom-left corner
        (x1, y2 - tag_h),
        (cx - tag_w // 2, cy - tag_h // 2),  # centre
        (cx - tag_w // 2, cy - tag_h // 2 - tag_h),
        (cx - tag_w // 2, cy + tag_h // 2),
    ]
    for x, y in candidates:
        x = min(max(x, 0), width - tag_w)
        y = min(max(y, 0), height - tag_h)
        rect = (x, y, x + tag_w, y + tag_h)
        if not any(_overlaps(rect, other) for other in placed):
            return rect
    return None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
