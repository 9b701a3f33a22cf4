"""Masks as polygons, for COCO polygon and YOLO segmentation exports. Pure numpy + OpenCV.

Polygons follow the pixels' edges, not their centres: a polygon through the corners of the
mask's boundary pixels rasterises back (pycocotools samples pixel centres) to exactly those
pixels, where a polygon through the boundary pixels' centres would lose half of each of them
(IoU 0.88 on a 100-pixel-wide shape). They are traced by OpenCV on the mask doubled in size:
there, every boundary lies between two pixels of one original pixel's 2x2 block, and index
``i`` of the doubled image maps to the edge ``(i + 1) // 2`` of the original.

Holes are kept. A COCO polygon list is a *union* (pycocotools merges them), so a hole cannot be
a polygon of its own: each hole is joined to the outline of its part by a zero-width cut (out
along a segment, around the hole, back along the same segment). Rasterisers that fill by
crossings, as pycocotools does, leave the hole empty and the cut without area (tested). A YOLO
segmentation line holds one polygon per instance: there the parts of an instance are joined by
such cuts as well (Ultralytics joins parts this way in its own COCO converter).
"""

from __future__ import annotations

import cv2
import numpy as np

#: Vertices may move this far (in pixels) when a traced outline is simplified.
SIMPLIFY_PIXELS = 0.5


def mask_parts(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """The mask's parts as closed polygons (``(n, 2)`` float arrays of x, y in image pixels),
    each with its holes joined in by zero-width cuts. ``origin`` is the mask's top-left pixel
    in the image (masks are usually decoded over their own region)."""
    if not mask.any():
        return []
    doubled = np.kron(np.ascontiguousarray(mask, dtype=np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    shift = np.asarray(origin, dtype=np.float64)
    parts = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole: joined to its parent below
            continue
        outline = _outline(contour, shift)
        if outline is None:
            continue
        child = hierarchy[i][2]
        while child != -1:
            hole = _outline(contours[child], shift)
            if hole is not None:
                outline = join(outline, hole)
            child = hierarchy[child][0]
        parts.append(outline)
    return parts


def _outline(contour: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
    simplified = cv2.approxPolyDP(contour, 2 * SIMPLIFY_PIXELS, True)
    if len(simplified) < 3:
        simplified = contour
    points = (simplified.reshape(-1, 2) + 1) // 2  # doubled-image index -> pixel edge
    points = _dedupe(points.astype(np.float64) + shift)
    return points if len(points) >= 3 else None


def _dedupe(points: np.ndarray) -> np.ndarray:
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    return points[keep] if keep.any() else points[:1]


def join(outline: np.ndarray, other: np.ndarray) -> np.ndarray:
    """One closed polygon tracing ``outline`` and ``other`` (a hole in it, or another part),
    joined by a zero-width cut between their two closest vertices."""
    best = (np.inf, 0, 0)
    for start in range(0, len(other), 256):  # bounded memory for long outlines
        chunk = other[start : start + 256]
        distances = ((outline[:, None, :] - chunk[None, :, :]) ** 2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        if distances[i, j] < best[0]:
            best = (distances[i, j], int(i), start + int(j))
    _, i, j = best
    around = np.concatenate([other[j:], other[: j + 1]])
    return np.concatenate([outline[: i + 1], around, outline[i:]])


def coco_polygons(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """COCO ``segmentation`` polygons: one flat ``[x1, y1, x2, y2, ...]`` list per part."""
    return [part.ravel().tolist() for part in mask_parts(mask, origin)]


def yolo_polygon(
    mask: np.ndarray, image_size: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> list[float]:
    """One YOLO segmentation polygon for the whole instance: ``[x1, y1, ...]`` in 0..1."""
    parts = mask_parts(mask, origin)
    if not parts:
        return []
    joined = parts[0]
    for part in parts[1:]:
        joined = join(joined, part)
    width, height = image_size
    return (joined / np.array([width, height], dtype=np.float64)).ravel().tolist()
