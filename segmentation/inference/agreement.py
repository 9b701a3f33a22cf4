"""Comparing two runtimes' answers: the same detections (an FP32 export against torch), or how
many of them (an INT8 export, whose answers differ a little).

``make export``, the worker's background export, the benchmarks and the tests all judge with
these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from .base import Segmenter
from .detection import Detection, box_iou, mask_iou
from .errors import InferenceError

#: Agreement required between FP32 runtimes, per detection.
SCORE_TOLERANCE = 1e-4
MIN_BOX_IOU = 0.99
MIN_MASK_IOU = 0.98
#: ...or, for boxes a fraction of a pixel wide, where a thousandth of a pixel moves the IoU by a
#: percent, every coordinate within this many pixels.
MAX_BOX_SHIFT = 0.01

#: What counts as the same instance for an INT8 export (issue 14's measure).
INT8_MIN_BOX_IOU = 0.9
INT8_MIN_MASK_IOU = 0.85


class ExportRefusedError(InferenceError):
    """The exported network does not give the torch runtime's detections: nothing was installed."""


def boxes_agree(a: Sequence[float], b: Sequence[float]) -> bool:
    """IoU >= ``MIN_BOX_IOU``, or (degenerate boxes) every coordinate within ``MAX_BOX_SHIFT``."""
    shift = max(abs(u - v) for u, v in zip(a, b, strict=True))
    return box_iou(a, b) >= MIN_BOX_IOU or shift <= MAX_BOX_SHIFT


@dataclass
class Agreement:
    """How closely two runtimes' detections agree, over everything compared so far."""

    detections: int = 0
    max_score_delta: float = 0.0
    min_box_iou: float = 1.0
    min_mask_iou: float = 1.0  # over detections that are not slivers
    slivers: int = 0  # detections under a pixel wide or tall (their mask IoU is not compared)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "detections": self.detections,
            "max_score_delta": self.max_score_delta,
            "min_box_iou": round(self.min_box_iou, 6),
            "min_mask_iou": round(self.min_mask_iou, 6),
            "slivers": self.slivers,
        }


def compare_detections(
    reference: Sequence[Detection],
    candidate: Sequence[Detection],
    *,
    threshold: float,
    agreement: Agreement | None = None,
) -> list[str]:
    """What differs between two runtimes' answers for one photo; empty when they agree.

    Every detection must have a counterpart with the same label, a score within
    ``SCORE_TOLERANCE``, the same box (``boxes_agree``) and mask IoU >= ``MIN_MASK_IOU`` (not
    required of slivers under a pixel wide or tall, whose masks are all edge). Both lists
    are best first, so the order can only differ between detections whose scores are within the
    tolerance of each other. A detection whose score is within the tolerance of ``threshold`` may
    be missing from the other list: rounding decides on which side of the threshold it falls.
    ``agreement``, when given, accumulates the matched detections' worst deltas.
    """
    problems = []
    unmatched = list(candidate)
    for ref in reference:
        best, best_iou = None, -1.0
        for cand in unmatched:
            if cand.label != ref.label or abs(cand.score - ref.score) > SCORE_TOLERANCE:
                continue
            if not boxes_agree(ref.box, cand.box):
                continue
            iou = box_iou(ref.box, cand.box)
            if iou > best_iou:
                best, best_iou = cand, iou
        if best is None:
            if ref.score - threshold > SCORE_TOLERANCE:
                problems.append(f"missing {describe(ref)}")
            continue
        unmatched.remove(best)
        masks = mask_iou(ref, best)
        if masks < MIN_MASK_IOU and not _sliver(ref.box):
            problems.append(f"mask IoU {masks:.3f} for {describe(ref)}")
        if agreement is not None:
            agreement.detections += 1
            agreement.max_score_delta = max(agreement.max_score_delta, abs(best.score - ref.score))
            agreement.min_box_iou = min(agreement.min_box_iou, best_iou)
            if _sliver(ref.box):
                agreement.slivers += 1
            else:
                agreement.min_mask_iou = min(agreement.min_mask_iou, masks)
    problems += [f"extra {describe(c)}" for c in unmatched if c.score - threshold > SCORE_TOLERANCE]
    return problems


def _sliver(box: Sequence[float]) -> bool:
    # A box under a pixel wide or tall pastes its 28x28 mask into a single row or column of
    # pixels, every one of them on the mask's edge: a 1e-5 change of a probability near 0.5 flips
    # one, and one pixel of ten moves the IoU by 10%. Its box is still compared to 0.01 px.
    return box[2] - box[0] < 1 or box[3] - box[1] < 1


def describe(det: Detection) -> str:
    box = ", ".join(f"{v:.0f}" for v in det.box)
    return f"{det.label} {det.score:.4f} at ({box})"


def verify(
    reference: Segmenter,
    candidate: Segmenter,
    photos: Mapping[str, Image.Image],
    thresholds: Sequence[float],
) -> Agreement:
    """Run both segmenters on every photo at every threshold; raise unless they all agree.

    The reference runs once per photo, at the lowest threshold, and is filtered for the others:
    the torch runtime's answers at a higher threshold are exactly those (``test_maskrcnn`` checks
    it). The candidate runs at each threshold, since its threshold may be an input of its graph.

    Raises:
        ExportRefusedError: listing the first differences.
    """
    agreement = Agreement()
    problems = []
    lowest = min(thresholds)
    for label, image in photos.items():
        expected_all = reference.predict(image, score_threshold=lowest)
        for threshold in thresholds:
            expected = [d for d in expected_all if d.score >= threshold]
            found = candidate.predict(image, score_threshold=threshold)
            differences = compare_detections(
                expected, found, threshold=threshold, agreement=agreement
            )
            problems += [f"{label} at {threshold}: {p}" for p in differences]
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportRefusedError(
            f"the OpenVINO network disagrees with torch on {len(problems)} detection(s): "
            f"{shown}{more}"
        )
    return agreement


@dataclass
class Reproduction:
    """How many of a reference's instances another runtime finds (INT8 against FP32)."""

    reference: int = 0  # instances of the reference, over every photo compared
    reproduced: int = 0  # ...found by the candidate: same label, box and mask IoU as required
    extra: int = 0  # candidate instances matching none of the reference's

    @property
    def share(self) -> float:
        return self.reproduced / self.reference if self.reference else 1.0

    def add(self, reference: Sequence[Detection], candidate: Sequence[Detection]) -> list[str]:
        """Match one photo's instances (both lists already cut at the same threshold).

        Greedy, best reference first: each takes the same-label candidate with the highest box
        IoU, if box IoU >= ``INT8_MIN_BOX_IOU`` and mask IoU >= ``INT8_MIN_MASK_IOU``. Returns
        what did not match, for people.
        """
        problems = []
        unmatched = list(candidate)
        for ref in reference:
            self.reference += 1
            scored = [(box_iou(ref.box, c.box), c) for c in unmatched if c.label == ref.label]
            scored = [(iou, c) for iou, c in scored if iou >= INT8_MIN_BOX_IOU]
            best = max(scored, key=lambda pair: pair[0], default=None)
            if best is None or mask_iou(ref, best[1]) < INT8_MIN_MASK_IOU:
                problems.append(f"missing {describe(ref)}")
                continue
            unmatched.remove(best[1])
            self.reproduced += 1
        self.extra += len(unmatched)
        problems += [f"extra {describe(c)}" for c in unmatched]
        return problems

    def as_dict(self) -> dict[str, float | int]:
        return {
            "reference": self.reference,
            "reproduced": self.reproduced,
            "extra": self.extra,
            "share": round(self.share, 4),
        }
