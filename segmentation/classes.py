"""Per-job class counts and per-user class summaries: how they are computed from detections.

Pure functions over model classes passed in, so that the migration that fills the tables for
existing jobs (with its historical models) and the services (with the real ones) compute the
same thing. The services decide *when* (``services.job_classes_sync``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .inference.coco import COCO_LABELS

#: Bits of a job's class set: ``labels_low`` holds COCO_LABELS[0:40], ``labels_high`` [40:80].
#: 40 bits per column stay clear of the sign bit of a 64-bit integer in every database.
BITS_PER_COLUMN = 40
BIT_OF = {label: i for i, label in enumerate(COCO_LABELS)}


def label_bits(labels: Iterable[str]) -> tuple[int, int]:
    """``(labels_low, labels_high)`` for a set of labels; a label outside COCO has no bit."""
    low = high = 0
    for label in labels:
        bit = BIT_OF.get(label)
        if bit is None:
            continue
        if bit < BITS_PER_COLUMN:
            low |= 1 << bit
        else:
            high |= 1 << (bit - BITS_PER_COLUMN)
    return low, high


def bit_mask(label: str) -> tuple[str, int] | None:
    """The column and mask that say whether a job shows ``label``, or None (no bit)."""
    bit = BIT_OF.get(label)
    if bit is None:
        return None
    if bit < BITS_PER_COLUMN:
        return "labels_low", 1 << bit
    return "labels_high", 1 << (bit - BITS_PER_COLUMN)


@dataclass(frozen=True)
class Shown:
    """One class of a job at its threshold."""

    label: str
    count: int
    max_score: float


def shown_classes(scored: Iterable[tuple[str, float]], threshold: float) -> list[Shown]:
    """The classes of ``(label, score)`` detections scoring at least ``threshold``."""
    counts: Counter[str] = Counter()
    best: dict[str, float] = {}
    for label, score in scored:
        if score >= threshold:
            counts[label] += 1
            best[label] = max(best.get(label, 0.0), score)
    return [Shown(label, counts[label], best[label]) for label in sorted(counts)]


def class_rows(JobClass, job, shown: list[Shown]) -> list:
    """Unsaved ``JobClass`` rows of ``job`` (any object with the job's fields)."""
    low, high = label_bits(s.label for s in shown)
    return [
        JobClass(
            job_id=job.pk,
            owner_id=job.owner_id,
            label=s.label,
            count=s.count,
            max_score=s.max_score,
            visible=not job.hidden,
            created_at=job.created_at,
            labels_low=low,
            labels_high=high,
        )
        for s in shown
    ]


def rebuild_all(Job, Detection, JobClass, UserClass, *, batch: int = 2000) -> None:
    """Recompute every job's class rows and every user's summary from the detections.

    For the migration that introduces them, ``manage.py rebuild_class_counts`` and the
    benchmark's generated histories. Run it while nothing else writes jobs.
    """
    JobClass.objects.all().delete()
    UserClass.objects.all().delete()
    summary: Counter[tuple[int, str]] = Counter()
    jobs = (
        Job.objects.filter(status="succeeded")
        .only("id", "owner_id", "hidden", "created_at", "score_threshold")
        .order_by("pk")
    )
    pending: list = []
    for chunk in _chunks(jobs.iterator(chunk_size=batch), batch):
        scored: dict = {job.pk: [] for job in chunk}
        rows = Detection.objects.filter(job_id__in=list(scored)).values_list(
            "job_id", "label", "score"
        )
        for job_id, label, score in rows:
            scored[job_id].append((label, score))
        for job in chunk:
            shown = shown_classes(scored[job.pk], job.score_threshold)
            pending.extend(class_rows(JobClass, job, shown))
            if not job.hidden:
                summary.update((job.owner_id, s.label) for s in shown)
        JobClass.objects.bulk_create(pending, batch_size=batch)
        pending.clear()
    UserClass.objects.bulk_create(
        [UserClass(owner_id=owner, label=label, jobs=n) for (owner, label), n in summary.items()],
        batch_size=batch,
    )


def _chunks(items: Iterable, size: int):
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
