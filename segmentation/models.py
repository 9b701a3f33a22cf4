"""Jobs (one uploaded photo each), the instances found in them, collections of jobs, webhooks."""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import F, Q
from django.urls import reverse

#: Runs a job gets before a dying worker fails it for good (per retry; see services.jobs_sweep).
MAX_ATTEMPTS = 3


#: The model permission, any one of them, that lets a user do each action to everyone's jobs
#: and collections; a job's owner needs none for their own. Collections are groups of jobs:
#: the job permissions open them too. As in Django's admin, changing implies seeing.
ACTION_PERMISSIONS = {
    "view": ("segmentation.view_job", "segmentation.change_job"),  # the job, as a record
    "download": ("segmentation.view_job", "segmentation.change_job"),  # its photo, results, files
    "change": ("segmentation.change_job",),  # threshold, retry; hide, show, run again
    "delete": ("segmentation.delete_job",),
}
#: What an owner may still do with a job a moderator hid: see that it was hidden, when and
#: why, and delete it. Its photo and results are no longer theirs to download or change.
OWNER_ACTIONS_WHEN_HIDDEN = frozenset({"view", "delete"})


def may_on_everyones(user, action: str) -> bool:
    """Whether ``user``'s permissions let them do ``action`` to anyone's jobs (``is_staff``
    alone gives nothing: it only opens the admin's door). Acting needs seeing too."""
    if not user.is_authenticated or not user.is_active:
        return False
    needed = {"view", action}
    return all(any(user.has_perm(p) for p in ACTION_PERMISSIONS[a]) for a in needed)


class OwnedQuerySet(models.QuerySet):
    """The one owner/permission scope: every page, API route, file route and admin query
    starts from ``for_user`` (a list) or ``get_for`` (one row)."""

    def for_user(self, user, action: str = "view") -> OwnedQuerySet:
        """Rows ``user`` may do ``action`` to (one of ``ACTION_PERMISSIONS``): their own, or
        everyone's with the permission.

        Another user's row is simply not found, so that it is a 404 that does not reveal it
        exists.
        """
        if action not in ACTION_PERMISSIONS:
            raise ValueError(f"Unknown action {action!r}.")
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if may_on_everyones(user, action):
            return self
        return self._owned_by(user, action)

    def _owned_by(self, user, action: str) -> OwnedQuerySet:
        return self.filter(owner=user)

    def get_for(self, user, pk, action: str = "view"):
        """The row ``pk`` if ``user`` may do ``action`` to it.

        Raises ``DoesNotExist`` when they may not even see it (the caller's 404), and
        ``PermissionDenied`` saying why when they may see it but not do this (a 403).
        """
        try:
            row = self.for_user(user).filter(pk=pk).first()
        except (ValidationError, ValueError, TypeError):
            row = None  # a malformed id names no row (as with ``get_object_or_404``)
        if row is None:
            raise self.model.DoesNotExist("Not found.")
        if not row.allows(user, action):
            raise PermissionDenied(row.refusal(user, action))
        return row


class Owned:
    """``allows``: the scope's rule for one row already loaded (a page deciding what to show,
    ``get_for`` deciding between a 404 and a 403). ``_owner_may`` mirrors ``_owned_by``."""

    def allows(self, user, action: str) -> bool:
        if may_on_everyones(user, action):
            return True
        return user.is_active and self.owner_id == user.pk and self._owner_may(action)

    def _owner_may(self, action: str) -> bool:
        return True

    def refusal(self, user, action: str) -> str:
        return f"You may see this {self._meta.verbose_name} but not {action} it."


class JobQuerySet(OwnedQuerySet):
    def _owned_by(self, user, action: str) -> JobQuerySet:
        mine = self.filter(owner=user)
        return mine if action in OWNER_ACTIONS_WHEN_HIDDEN else mine.filter(hidden=False)

    def with_label(self, label: str) -> JobQuerySet:
        """Jobs with at least one instance of ``label`` above their current threshold."""
        return self.filter(pk__in=JobClass.objects.filter(label=label).values("job_id"))


class DetectionQuerySet(models.QuerySet):
    def above_threshold(self) -> DetectionQuerySet:
        """Instances that count: those scoring at least their job's current threshold.

        A job keeps detections down to ``kept_min_score`` so that its threshold can be changed
        later without running the model again; everything shown or exported uses this.
        """
        return self.filter(score__gte=F("job__score_threshold"))


class Job(Owned, models.Model):
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
    collection = models.ForeignKey(
        "Collection",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,  # services.collection_delete removes the jobs and their files
        related_name="jobs",
    )

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
    score_threshold = models.FloatField(help_text="Detections scoring less are not shown.")
    kept_min_score = models.FloatField(
        help_text="Detections down to this score are kept, so the threshold can go this low."
    )

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
    overlay_thumbnail = models.FileField(max_length=255, blank=True)
    overlay_threshold = models.FloatField(
        null=True, blank=True, help_text="The threshold the stored overlay was drawn at."
    )
    preview = models.FileField(
        max_length=255, blank=True, help_text="The photo at screen size, for the viewer."
    )
    result_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Bytes of the overlay files and preview (for the storage quota)."
    )

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
            # An owner's jobs less those a moderator hid (what exports select; the history
            # shows hidden jobs too, marked): a count and any page of them from the index
            # alone. Django writes hidden=False as NOT hidden, which is no equality: hidden
            # comes after the date, or every page would sort them.
            models.Index(fields=["owner", "-created_at", "hidden", "id"], name="job_owner_visible"),
            # ...and its count from an index a third that size (measured: 3.0 against 6.6 ms
            # for 50k jobs on a fresh SQLite connection).
            models.Index(fields=["owner", "hidden"], name="job_owner_hidden"),
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status"),
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(score_threshold__gte=0) & Q(score_threshold__lte=1),
                name="job_threshold_0_1",
            ),
            models.CheckConstraint(
                condition=Q(kept_min_score__gte=0) & Q(kept_min_score__lte=F("score_threshold")),
                name="job_kept_min_score_below_threshold",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="job_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.original_filename} ({self.get_status_display().lower()})"

    def _owner_may(self, action: str) -> bool:
        return not self.hidden or action in OWNER_ACTIONS_WHEN_HIDDEN

    def refusal(self, user, action: str) -> str:
        if self.hidden and self.owner_id == user.pk:
            return f"{self.hidden_notice} You can still delete it."
        return super().refusal(user, action)

    @property
    def hidden_notice(self) -> str:
        """What the owner of a hidden job is told: by whom (a moderator), when and why."""
        when = f" on {self.hidden_at:%Y-%m-%d}" if self.hidden_at else ""
        return (
            f"A moderator hid this job{when}, giving this reason: {self.hidden_reason.strip()} "
            "Its photo, results and downloads are no longer available."
        )

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

    objects = DetectionQuerySet.as_manager()

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


class JobClass(models.Model):
    """One class a finished job shows at its current threshold: how many instances, best score.

    What searching a history by content reads instead of the detections. Services keep these
    rows (and ``UserClass``) in step with every change of what a job shows: finishing, a new
    threshold, a re-run, hiding, deletion (``services.job_classes_sync``). Copies of the job's
    owner, visibility and date, and the job's whole class set as bits, let one index answer a
    search, its count and any page of it without reading the jobs table
    (``segmentation.search``).
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="class_counts")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    label = models.CharField(max_length=64)
    count = models.PositiveIntegerField(help_text="Instances scoring at least the threshold.")
    max_score = models.FloatField()
    visible = models.BooleanField(help_text="Not hidden by a moderator (a copy of the job's).")
    created_at = models.DateTimeField(help_text="A copy of the job's.")
    labels_low = models.BigIntegerField(
        help_text="Every class the job shows, as bits: COCO_LABELS[0:40] (see classes.py)."
    )
    labels_high = models.BigIntegerField(help_text="The same for COCO_LABELS[40:80].")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "label"], name="jobclass_job_label_unique"),
        ]
        indexes = [
            # Covers a search: the driving class's rows of one owner, newest first, with all that
            # the other conditions test (see search.py). visible=True is written as a truth
            # test, not an equality: it comes after the date, like the other tested columns.
            models.Index(
                fields=[
                    *("owner", "label", "created_at", "job", "visible"),
                    *("count", "max_score", "labels_low", "labels_high"),
                ],
                name="jobclass_search",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} x{self.count}"


class UserClass(models.Model):
    """How many of a user's jobs (those not hidden) show a class: the history page's facets."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="class_summary"
    )
    label = models.CharField(max_length=64)
    jobs = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "label"], name="userclass_owner_label_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.jobs} jobs"


class ExportQuerySet(models.QuerySet):
    def for_user(self, user) -> ExportQuerySet:
        """Exports are private: only their owner sees them (moderators included)."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        return self.filter(owner=user)


class Export(models.Model):
    """A ZIP of jobs in a dataset format, built by a worker and kept for a few days."""

    class Format(models.TextChoices):
        COCO = "coco", "COCO, masks as RLE"
        COCO_POLYGONS = "coco_polygons", "COCO, masks as polygons"
        YOLO = "yolo", "YOLO segmentation (Ultralytics text files)"
        MASKS = "masks", "PNG masks, one per instance"
        CUTOUTS = "cutouts", "Cut-outs, one transparent PNG per instance"

    Status = Job.Status

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exports"
    )
    format = models.CharField(max_length=16, choices=Format.choices)
    status = models.CharField(max_length=10, choices=Job.Status.choices, default=Status.QUEUED)
    jobs = models.ManyToManyField(Job, related_name="+", help_text="What was selected.")
    selection = models.JSONField(default=dict, help_text="The request's jobs or filters.")
    total = models.PositiveIntegerField(help_text="Jobs selected.")
    done = models.PositiveIntegerField(default=0, help_text="Jobs written so far.")
    file = models.FileField(max_length=255, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(help_text="The export and its file are deleted then.")

    objects = ExportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "status"], name="export_owner_status"),
            models.Index(fields=["expires_at"], name="export_expires"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="export_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_format_display()} of {self.total} jobs ({self.status})"


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


class CollectionQuerySet(OwnedQuerySet):
    def with_progress(self) -> CollectionQuerySet:
        """Annotate the counts ``Collection.progress`` reads: one query for a whole page."""
        status = "jobs__status"
        return self.annotate(
            jobs_total=models.Count("jobs"),
            jobs_queued=models.Count("jobs", filter=Q(**{status: Job.Status.QUEUED})),
            jobs_running=models.Count("jobs", filter=Q(**{status: Job.Status.RUNNING})),
            jobs_done=models.Count("jobs", filter=Q(**{status: Job.Status.SUCCEEDED})),
            jobs_failed=models.Count("jobs", filter=Q(**{status: Job.Status.FAILED})),
        ).order_by("-created_at")  # Meta.ordering does not apply to aggregating queries


class Collection(Owned, models.Model):
    """Jobs uploaded together: several photos in one request, or the photos of one ZIP."""

    class Source(models.TextChoices):
        UPLOAD = "upload", "Photos"
        ARCHIVE = "archive", "ZIP archive"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections"
    )
    name = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices)
    rejected = models.JSONField(
        default=list, blank=True, help_text='Files not made into jobs: [{"name", "reason"}].'
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sealed_at = models.DateTimeField(
        null=True, blank=True, help_text="Every file has been accepted or rejected."
    )
    finished_at = models.DateTimeField(
        null=True, blank=True, help_text="Sealed and every job finished (collection.finished)."
    )

    objects = CollectionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="collection_owner_created")]

    def __str__(self) -> str:
        return self.name

    @property
    def progress(self) -> dict[str, int]:
        """Jobs by state: from ``with_progress()`` annotations, else counted now."""
        if not hasattr(self, "jobs_total"):
            return Collection.objects.with_progress().get(pk=self.pk).progress
        return {
            "total": self.jobs_total,
            "queued": self.jobs_queued,
            "running": self.jobs_running,
            "done": self.jobs_done,
            "failed": self.jobs_failed,
        }

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    @property
    def jobs_path(self) -> str:
        return f"{reverse('api-job-list')}?collection={self.pk}"


class Webhook(models.Model):
    """An owner's URL that is told, with a signed POST, when their jobs or collections finish."""

    class Event(models.TextChoices):
        JOB_FINISHED = "job.finished", "A job finished"
        COLLECTION_FINISHED = "collection.finished", "A collection finished"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(help_text="Event names this webhook receives.")
    secret = models.CharField(max_length=64, default=secrets.token_hex, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event for one webhook, tried until it is answered 2xx or the attempts run out."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32, choices=Webhook.Event.choices)
    payload = models.JSONField(help_text="The body, less its timestamp (added per attempt).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="When it is due (or its running attempt's lease ends)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
            models.Index(fields=["webhook", "-created_at"], name="delivery_webhook_created"),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id} ({self.status})"

    @property
    def last_attempt(self) -> WebhookAttempt | None:
        attempts = list(self.attempt_log.all())  # prefetched by the pages that show it
        return attempts[-1] if attempts else None


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, what the receiver answered, or what went wrong."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "2xx"
        HTTP_ERROR = "http_error", "Non-2xx answer"
        NETWORK_ERROR = "network_error", "No answer (connection, timeout, TLS)"
        REFUSED = "refused", "Destination refused (private or reserved address)"

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveSmallIntegerField()
    at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["delivery", "number"]
        indexes = [models.Index(fields=["outcome"], name="attempt_outcome")]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.outcome}"


class RefusedUploadCount(models.Model):
    """How many photos were refused, by reason: a counter shared by every web process, read
    by ``/metrics`` (no per-process state to add up)."""

    reason = models.CharField(max_length=32, unique=True)
    count = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.reason}: {self.count}"
