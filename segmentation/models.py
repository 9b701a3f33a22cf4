"""Jobs (one uploaded photo each) and the instances found in them."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

#: Runs a job gets before a dying worker fails it for good (per retry; see services.jobs_sweep).
MAX_ATTEMPTS = 3


class JobQuerySet(models.QuerySet):
    def for_user(self, user) -> JobQuerySet:
        """Jobs ``user`` may see: staff see everything, others their own jobs not hidden.

        Every view, API endpoint and admin query starts from here, so that another user's job
        is simply not found (a 404 that does not reveal it exists).
        """
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(owner=user, hidden=False)

    def with_label(self, label: str) -> JobQuerySet:
        return self.filter(pk__in=Detection.objects.filter(label=label).values("job_id"))


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)

    image = models.FileField(max_length=255)
    thumbnail = models.FileField(max_length=255, blank=True)
    original_filename = models.CharField(max_length=255)
    image_format = models.CharField(max_length=10)  # Pillow's name: JPEG, PNG, WEBP...
    image_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField(help_text="After EXIF orientation.")
    height = models.PositiveIntegerField(help_text="After EXIF orientation.")

    model = models.CharField(max_length=64, help_text="Model that runs (or ran) the job.")
    runtime = models.CharField(max_length=16, blank=True, help_text="torch, openvino...")
    precision = models.CharField(
        max_length=8,
        default="fp32",
        help_text="fp32 or int8: the one asked for, then the one that ran (fp32 when the INT8 "
        "export was not ready yet, or on torch).",
    )
    score_threshold = models.FloatField()

    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Runs started, ever.")
    attempt_limit = models.PositiveSmallIntegerField(
        default=MAX_ATTEMPTS,
        help_text="A job whose worker dies at this many attempts fails; a retry raises it.",
    )
    worker = models.CharField(max_length=255, blank=True, help_text="Host and pid running it.")
    inference_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)

    error = models.TextField(blank=True, help_text="Why the job failed, for its owner.")
    overlay = models.FileField(max_length=255, blank=True)

    hidden = models.BooleanField(default=False, help_text="Hidden from its owner by a moderator.")
    hidden_reason = models.TextField(blank=True)
    hidden_at = models.DateTimeField(null=True, blank=True)
    hidden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status"),
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(score_threshold__gte=0) & Q(score_threshold__lte=1),
                name="job_threshold_0_1",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="job_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.original_filename} ({self.get_status_display().lower()})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Detection(models.Model):
    """One instance: class, score, box in the upright photo's pixels, mask as COCO RLE."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="detections")
    rank = models.PositiveSmallIntegerField(help_text="0 = highest score.")
    label = models.CharField(max_length=64)
    score = models.FloatField()
    x1 = models.FloatField()
    y1 = models.FloatField()
    x2 = models.FloatField()
    y2 = models.FloatField()
    area = models.PositiveIntegerField(help_text="Mask pixels.")
    rle = models.JSONField(help_text='COCO RLE: {"size": [h, w], "counts": "..."}')

    class Meta:
        ordering = ["job", "rank"]
        indexes = [models.Index(fields=["label", "job"], name="detection_label_job")]
        constraints = [
            models.UniqueConstraint(fields=["job", "rank"], name="detection_job_rank_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.score:.2f}"

    @property
    def box(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class ModelReport(models.Model):
    """What the last worker process that loaded a model found: whether it runs, and why not.

    Written by workers (``services.model_report_record``), read by the web process, which never
    imports torch itself: a model whose package cannot import or whose weights cannot load is
    then shown unusable, with the reason, by the API, the upload form and ``/readyz``.
    """

    model = models.CharField(max_length=64, primary_key=True)
    usable = models.BooleanField()
    runtime = models.CharField(max_length=16, blank=True)
    reason = models.TextField(blank=True, help_text="Why it cannot run; empty when usable.")
    worker = models.CharField(max_length=255, help_text="Host and pid that reported.")
    reported_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.model}: {'usable' if self.usable else 'unusable'}"
