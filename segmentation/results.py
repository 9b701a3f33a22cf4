"""What a job's results look like to people: instances with their colours, classes with counts.

Read-only helpers for the pages (no writes here). Colours come from the overlay renderer's
``palette`` over every kept detection, best first, so the browser's viewer, the chips and the
PNG overlay agree, and moving the threshold changes no colour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .inference.overlay import hex_colour, ink_for, palette
from .models import Detection, Job


@dataclass
class ClassSummary:
    label: str
    colour: str  # "#rrggbb"
    ink: str  # text colour on it, 4.5:1 or better
    shown: int = 0  # instances scoring at least the job's threshold
    kept: int = 0


@dataclass
class Instance:
    detection: Detection
    colour: str  # its own
    shown: bool
    of_class: ClassSummary


@dataclass
class Results:
    instances: list[Instance] = field(default_factory=list)
    classes: list[ClassSummary] = field(default_factory=list)  # in order of first appearance

    @property
    def shown_count(self) -> int:
        return sum(c.shown for c in self.classes)


def summarise(detections: Iterable[Detection], threshold: float) -> Results:
    """Colours and counts for a job's kept ``detections`` (best first) at ``threshold``."""
    detections = list(detections)
    colours = palette([d.label for d in detections])
    classes = {
        label: ClassSummary(label, hex_colour(rgb), hex_colour(ink_for(rgb)))
        for label, rgb in colours.classes.items()
    }
    results = Results(classes=list(classes.values()))
    for det, rgb in zip(detections, colours.instances, strict=True):
        shown = det.score >= threshold
        summary = classes[det.label]
        summary.kept += 1
        summary.shown += shown
        results.instances.append(Instance(det, hex_colour(rgb), shown, summary))
    return results


def job_results(job: Job) -> Results:
    if job.status != Job.Status.SUCCEEDED:
        return Results()
    return summarise(job.detections.order_by("rank"), job.score_threshold)


def viewer_data(job: Job, results: Results, *, can_change: bool) -> dict:
    """The job page viewer's data: every kept instance, compactly (masks as COCO RLE strings).

    Each instance is ``[rank, label, score, x1, y1, x2, y2, area, colour, rle_counts]``; all
    masks share the image size.
    """
    return {
        "width": job.width,
        "height": job.height,
        "threshold": job.score_threshold,
        "min": job.kept_min_score,
        "canChange": can_change,
        "classes": [[c.label, c.colour, c.ink] for c in results.classes],
        "instances": [
            [
                i.detection.rank,
                i.detection.label,
                round(i.detection.score, 4),
                round(i.detection.x1, 1),
                round(i.detection.y1, 1),
                round(i.detection.x2, 1),
                round(i.detection.y2, 1),
                i.detection.area,
                i.colour,
                i.detection.rle["counts"],
            ]
            for i in results.instances
        ],
    }


def chips_for(jobs: Iterable[Job]) -> dict:
    """Per job: its classes above its threshold, ``[(label, count, colour, ink)]``; one query."""
    jobs = list(jobs)
    thresholds = {job.pk: job.score_threshold for job in jobs}
    kept: dict = {}
    rows = (
        Detection.objects.filter(job__in=list(thresholds))
        .order_by("job_id", "rank")
        .only("id", "job_id", "rank", "label", "score")
    )
    for det in rows:
        kept.setdefault(det.job_id, []).append(det)
    out = {}
    for job_id, detections in kept.items():
        results = summarise(detections, thresholds[job_id])
        out[job_id] = [(c.label, c.shown, c.colour, c.ink) for c in results.classes if c.shown]
    return out
