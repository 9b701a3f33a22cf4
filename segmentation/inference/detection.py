"""The engine's output type: one detected instance, with a compact mask.

A mask is stored only over the detection's own region (``mask_box``), never over the whole image:
a 12 MP photo with 100 instances would otherwise hold 1.2 GB of booleans. ``full_mask()`` builds the
image-sized mask when a caller really needs one; ``rle()`` encodes straight from the compact mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Detection:
    """One instance found in an image.

    Attributes:
        label: COCO class name (``"person"``, ``"cup"``...).
        score: confidence in [0, 1].
        box: ``(x1, y1, x2, y2)`` in the original image's pixels (after EXIF orientation).
        mask: boolean array of shape ``(y1 - y0, x1 - x0)`` for ``mask_box``.
        mask_box: ``(x0, y0, x1, y1)`` integer pixel region the mask covers; it contains the
            detection's box (clipped to the image) and any pixel of the mask.
        image_size: ``(width, height)`` of the image the detection belongs to.
        area: number of mask pixels.
    """

    label: str
    score: float
    box: Box
    mask: np.ndarray = field(repr=False, compare=False)
    mask_box: tuple[int, int, int, int]
    image_size: tuple[int, int]
    area: int

    @classmethod
    def from_region(
        cls,
        *,
        label: str,
        score: float,
        box: Box,
        mask: np.ndarray,
        origin: tuple[int, int],
        image_size: tuple[int, int],
    ) -> Detection:
        """Build a detection from a region mask whose top-left pixel is ``origin`` = (x, y)."""
        mask = np.ascontiguousarray(mask, dtype=bool)
        x0, y0 = origin
        h, w = mask.shape
        width, height = image_size
        if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
            raise ValueError(f"mask region {(x0, y0, x0 + w, y0 + h)} exceeds image {image_size}")
        mask.setflags(write=False)
        return cls(
            label=label,
            score=float(score),
            box=tuple(float(v) for v in box),
            mask=mask,
            mask_box=(x0, y0, x0 + w, y0 + h),
            image_size=(int(width), int(height)),
            area=int(np.count_nonzero(mask)),
        )

    def full_mask(self) -> np.ndarray:
        """The mask as an image-sized ``(height, width)`` boolean array."""
        width, height = self.image_size
        out = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.mask_box
        out[y0:y1, x0:x1] = self.mask
        return out

    def rle(self) -> dict:
        """The mask in COCO's compressed RLE form, ``{"size": [h, w], "counts": str}``.

        Byte-for-byte what ``pycocotools.mask.encode`` gives for ``full_mask()``, computed from
        the compact mask without building the full-size one.
        """
        width, height = self.image_size
        return {"size": [height, width], "counts": _rle_string(self._run_lengths())}

    def _run_lengths(self) -> list[int]:
        # COCO RLE walks the image column by column (Fortran order) and starts with a run of 0s.
        # Outside our region every pixel is 0, so runs of 1s can only start and end inside it.
        width, height = self.image_size
        x0, y0, x1, y1 = self.mask_box
        if self.area == 0:
            return [width * height]
        # One padded column per image column of the region: the 0 above and below keeps a run
        # from spilling into the next column here; true spills are merged back below.
        padded = np.zeros((x1 - x0, y1 - y0 + 2), dtype=np.int8)
        padded[:, 1:-1] = self.mask.T
        flat = padded.ravel()
        edges = np.diff(flat)
        starts = np.flatnonzero(edges == 1) + 1  # index of the first 1 of each run
        ends = np.flatnonzero(edges == -1) + 1  # index just past its last 1
        stride = padded.shape[1]

        def image_pos(index: np.ndarray) -> np.ndarray:
            col, row = np.divmod(index, stride)
            return (x0 + col) * height + (y0 + row - 1)

        run_start, run_end = image_pos(starts), image_pos(ends)
        # A run ending on an image column's last row and the next starting on the next column's
        # first row touch in Fortran order: they are one run.
        touching = run_end[:-1] == run_start[1:]
        run_start = run_start[np.concatenate(([True], ~touching))]
        run_end = run_end[np.concatenate((~touching, [True]))]
        counts = np.empty(2 * len(run_start), dtype=np.int64)
        counts[0::2] = run_start - np.concatenate(([0], run_end[:-1]))  # 0s before each run
        counts[1::2] = run_end - run_start
        trailing = width * height - int(run_end[-1])
        return counts.tolist() + ([trailing] if trailing else [])


def _rle_string(counts: list[int]) -> str:
    """COCO's compact string form of run lengths (pycocotools' rleToString, in Python)."""
    out = bytearray()
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (1.0 for two empty boxes)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def mask_iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two detections' masks (1.0 when both are empty)."""
    x0, y0 = min(a.mask_box[0], b.mask_box[0]), min(a.mask_box[1], b.mask_box[1])
    x1, y1 = max(a.mask_box[2], b.mask_box[2]), max(a.mask_box[3], b.mask_box[3])
    canvases = []
    for det in (a, b):
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        bx0, by0, bx1, by1 = det.mask_box
        canvas[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = det.mask
        canvases.append(canvas)
    union = np.count_nonzero(canvases[0] | canvases[1])
    return np.count_nonzero(canvases[0] & canvases[1]) / union if union else 1.0
