"""Per-user quotas: bytes stored (photos and results) and jobs waiting or running.

Checked before a file is decoded or stored, for all the photos of a request at once, so that a
request over quota keeps nothing. Two requests racing may each pass and together go a little
over; the next one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Q, Sum

from .models import Job
from .uploads import RequestRefused, describe_bytes


class QuotaExceeded(RequestRefused):
    """Over a quota: 413 for stored bytes, 429 for jobs waiting; the message says both."""


@dataclass(frozen=True)
class Usage:
    stored_bytes: int
    queued_jobs: int


def usage(*, owner: AbstractBaseUser) -> Usage:
    """What ``owner`` holds now: bytes of photos and results, and jobs queued or running."""
    totals = Job.objects.filter(owner=owner).aggregate(
        stored=Sum(F("image_bytes") + F("result_bytes")),
        queued=Count("pk", filter=Q(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])),
    )
    return Usage(stored_bytes=totals["stored"] or 0, queued_jobs=totals["queued"] or 0)


def quota_check(*, owner: AbstractBaseUser, add_bytes: int, add_jobs: int) -> None:
    """Refuse ``add_jobs`` new jobs of ``add_bytes`` in all if they would pass a quota."""
    now = usage(owner=owner)
    most_jobs = settings.SEGWEB["QUOTA_QUEUED_JOBS"]
    if now.queued_jobs + add_jobs > most_jobs:
        raise QuotaExceeded(
            f"You have {now.queued_jobs} jobs waiting or running and your quota is {most_jobs}; "
            f"{add_jobs} more would pass it. Wait until some finish.",
            429,
            reason="quota_jobs",
            wait=60,
        )
    most_bytes = settings.SEGWEB["QUOTA_BYTES"]
    if now.stored_bytes + add_bytes > most_bytes:
        raise QuotaExceeded(
            f"Your photos and results take {describe_bytes(now.stored_bytes)} of your "
            f"{describe_bytes(most_bytes)} storage quota; {describe_bytes(add_bytes)} more "
            "would pass it. Delete some jobs to make room.",
            413,
            reason="quota_bytes",
        )
