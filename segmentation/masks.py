"""Stored masks (COCO RLE) back to the engine's compact ``Detection``, for re-drawing overlays.

The reverse of ``Detection.rle()``: decoding touches only the image columns a mask spans, never
an image-sized array per instance (100 instances on 12 MP would otherwise be 1.2 GB).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .inference import Detection as Found

if TYPE_CHECKING:
    from .models import Detection


def rle_counts(counts: str) -> list[int]:
    """Run lengths from COCO's compact string (pycocotools' rleFrString, in Python)."""
    out: list[int] = []
    data = counts.encode("ascii")
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_region(rle: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """The mask of a COCO RLE over its own bounding region: ``(mask, (x0, y0))``."""
    height, width = rle["size"]
    counts = np.asarray(rle_counts(rle["counts"]), dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    ones_start, ones_end = starts[1::2], ends[1::2]  # COCO RLE starts with a run of 0s
    keep = ones_end > ones_start
    ones_start, ones_end = ones_start[keep], ones_end[keep]
    if len(ones_start) == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    if ones_end[-1] > width * height:
        raise ValueError("RLE runs past the end of its image")
    col0, col1 = int(ones_start[0] // height), int((ones_end[-1] - 1) // height)
    offset = col0 * height
    edges = np.zeros((col1 - col0 + 1) * height + 1, dtype=np.int8)
    edges[ones_start - offset] += 1  # runs never touch: each index appears once
    edges[ones_end - offset] -= 1
    columns = np.cumsum(edges[:-1], dtype=np.int8).reshape(col1 - col0 + 1, height)
    rows = np.flatnonzero(columns.any(axis=0))
    mask = columns[:, rows[0] : rows[-1] + 1].T.astype(bool)
    return mask, (col0, int(rows[0]))


def to_found(detection: Detection) -> Found:
    """A stored detection as the engine's ``Detection`` (what ``render_overlay`` draws)."""
    mask, origin = rle_region(detection.rle)
    height, width = detection.rle["size"]
    return Found.from_region(
        label=detection.label,
        score=detection.score,
        box=(detection.x1, detection.y1, detection.x2, detection.y2),
        mask=mask,
        origin=origin,
        image_size=(width, height),
    )


def to_found_all(detections: Iterable[Detection]) -> list[Found]:
    return [to_found(d) for d in detections]
