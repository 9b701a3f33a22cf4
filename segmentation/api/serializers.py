"""API input and output shapes. Input is only parsed here; the photo itself is validated by
``uploads.validate_upload`` inside ``services.job_create``, exactly as for the pages."""

from __future__ import annotations

import math

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import files
from ..models import Collection, Detection, Export, Job, Webhook, WebhookAttempt, WebhookDelivery
from ..results import summarise

THRESHOLD_MESSAGE = "score_threshold must be a number between 0 and 1."


class JobOptionsSerializer(serializers.Serializer):
    """The options of a new job; typed as the schema says, with messages people can act on."""

    score_threshold = serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Minimum score, 0 to 1 (default 0.5).",
        error_messages={
            "invalid": THRESHOLD_MESSAGE,
            "min_value": THRESHOLD_MESSAGE,
            "max_value": THRESHOLD_MESSAGE,
        },
    )
    model = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="A name from GET /api/models/; 'auto' or empty for the default.",
    )
    precision = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="fp32 or int8 (faster, slightly different answers), where the server lets "
        "jobs choose (SEGWEB_PRECISION_PER_JOB); empty for the server's.",
    )

    def validate_score_threshold(self, value: float) -> float:
        if not math.isfinite(value):
            raise serializers.ValidationError(THRESHOLD_MESSAGE)
        return value


class JobThresholdSerializer(serializers.Serializer):
    """``PATCH /api/jobs/{id}/``: the one field that can change after the fact."""

    score_threshold = serializers.FloatField(
        min_value=0.0,
        max_value=1.0,
        help_text="Show detections scoring at least this: from the job's kept_min_score to 1. "
        "The model does not run again.",
    )

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"detail": 'Send a JSON object: {"score_threshold": 0.4}.'}
            )
        unknown = sorted(set(data) - {"score_threshold"})
        if unknown:
            raise serializers.ValidationError(
                {"detail": f"Only score_threshold can be changed, not {', '.join(unknown)}."}
            )
        if isinstance(data.get("score_threshold"), bool):
            raise serializers.ValidationError({"score_threshold": "A number, not true or false."})
        return super().to_internal_value(data)

    def validate_score_threshold(self, value: float) -> float:
        if not math.isfinite(value):
            raise serializers.ValidationError("A finite number.")
        return value


class JobCreateSerializer(JobOptionsSerializer):
    """Schema of ``POST /api/jobs/``; the photo is validated by ``uploads.validate_upload``."""

    image = serializers.FileField(help_text="The photo: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC.")


class RLESerializer(serializers.Serializer):
    size = serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2)
    counts = serializers.CharField()


class DetectionSerializer(serializers.ModelSerializer):
    box = serializers.ListField(
        child=serializers.FloatField(), min_length=4, max_length=4, help_text="x1, y1, x2, y2"
    )
    segmentation = RLESerializer(source="rle", help_text="COCO RLE of the instance's mask.")

    class Meta:
        model = Detection
        fields = ["label", "score", "box", "area", "segmentation"]


class ClassSerializer(serializers.Serializer):
    label = serializers.CharField()
    count = serializers.IntegerField()
    colour = serializers.CharField(help_text="#rrggbb, as in the overlay and the pages.")


class JobSummarySerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api-job-detail")
    labels = serializers.SerializerMethodField(
        help_text="Distinct classes detected (scoring at least score_threshold)."
    )
    classes = serializers.SerializerMethodField(
        help_text="Classes scoring at least score_threshold, in order of first appearance (best "
        "score first): instance count and the colour of the class in the overlay."
    )
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "status", "url", "created_at", "finished_at", "original_filename",
            "width", "height", "model", "score_threshold", "kept_min_score", "labels", "classes",
            "thumbnail_url", "hidden", "hidden_reason", "hidden_at",
        ]  # fmt: skip
        read_only_fields = fields
        extra_kwargs = {
            "hidden": {
                "help_text": "Hidden by a moderator: it stays in its owner's history, but its "
                "photo, results and files are no longer served to them (403); they may delete it."
            },
            "hidden_reason": {"help_text": "The moderator's reason; empty when not hidden."},
            "hidden_at": {"help_text": "When a moderator hid it; null when not hidden."},
        }

    #: What a job shows of its photo and results: withheld (empty, null) where the viewer may
    #: not download them, as from the owner of a hidden job.
    RESULTS = {"labels": [], "classes": [], "detections": [], "thumbnail_url": None,
               "image_url": None, "overlay_url": None}  # fmt: skip

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        if not job.allows(self.context["request"].user, "download"):
            data.update({k: v for k, v in self.RESULTS.items() if k in data})
        return data

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_labels(self, job: Job) -> list[str]:
        return sorted(c.label for c in self._classes(job))

    @extend_schema_field(ClassSerializer(many=True))
    def get_classes(self, job: Job) -> list[dict]:
        return [
            {"label": c.label, "count": c.shown, "colour": c.colour} for c in self._classes(job)
        ]

    @staticmethod
    def _classes(job: Job) -> list:
        # Prefetched by the views: the detections above the threshold, best first. Their colours
        # are those of all kept detections (the palette is prefix-stable).
        shown = [d for d in job.detections.all() if d.score >= job.score_threshold]
        return summarise(shown, job.score_threshold).classes

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_thumbnail_url(self, job: Job) -> str | None:
        return files.file_url(self.context["request"], job, "thumbnail")


class JobSerializer(JobSummarySerializer):
    image_url = serializers.SerializerMethodField()
    overlay_url = serializers.SerializerMethodField()
    detections = DetectionSerializer(
        many=True,
        read_only=True,
        help_text="Instances scoring at least score_threshold, best first.",
    )
    error = serializers.CharField(help_text="Why the job failed; empty otherwise.")

    class Meta(JobSummarySerializer.Meta):
        fields = [*JobSummarySerializer.Meta.fields, "started_at", "attempts", "runtime",
                  "precision", "inference_ms", "image_url", "overlay_url", "detections",
                  "error"]  # fmt: skip

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_image_url(self, job: Job) -> str | None:
        return files.file_url(self.context["request"], job, "image")

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_overlay_url(self, job: Job) -> str | None:
        return files.file_url(self.context["request"], job, "overlay")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What was wrong, for people.")
    errors = serializers.DictField(
        required=False, help_text="Messages per field, when the problem is in named fields."
    )


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    expiry = serializers.DateTimeField(
        allow_null=True, help_text="When the token stops working; null: never."
    )


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    usable = serializers.BooleanField(
        help_text="Whether jobs can use it: its files are here and workers load it."
    )
    reason = serializers.CharField(help_text="Why it cannot run; empty when usable.")
    default = serializers.BooleanField(help_text="The model 'auto' picks on this server.")


MAX_FILTER_VALUES = 10
MAX_FILTER_LENGTH = 4000


class ExportCreateSerializer(serializers.Serializer):
    """``POST /api/exports/``: a format and either job ids or the job list's filters."""

    format = serializers.ChoiceField(choices=Export.Format.choices)
    jobs = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        allow_empty=False,
        max_length=10_000,
        help_text="Ids of your succeeded jobs.",
    )
    filters = serializers.DictField(
        required=False,
        help_text="The job list's query (GET /api/jobs/ parameters), e.g. "
        '{"has": ["person:2", "dog"], "status": "succeeded"}: its succeeded jobs. Each value is '
        "a string, or a list of strings for has.",
    )

    def validate_filters(self, value: dict) -> dict:
        from .filters import JobFilter

        known = set(JobFilter.base_filters)
        unknown = sorted(set(value) - known)
        if unknown:
            raise serializers.ValidationError(
                f"Unknown filter {', '.join(map(repr, unknown))[:200]}; "
                f"known: {', '.join(sorted(known))}."
            )
        for key, item in value.items():
            items = item if isinstance(item, list) else [item]
            if len(items) > MAX_FILTER_VALUES or not all(
                isinstance(v, str) and len(v) <= MAX_FILTER_LENGTH for v in items
            ):
                raise serializers.ValidationError(
                    f"{key}: a string, or a list of at most {MAX_FILTER_VALUES} strings, of at "
                    f"most {MAX_FILTER_LENGTH} characters each (as in a URL's query)."
                )
        return value

    def validate(self, attrs: dict) -> dict:
        if ("jobs" in attrs) == ("filters" in attrs):
            raise serializers.ValidationError("Give either jobs or filters.")
        return attrs


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(help_text="Jobs written so far.")
    total = serializers.IntegerField(help_text="Jobs selected.")


class ExportSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api-export-detail")
    progress = serializers.SerializerMethodField()
    download_url = serializers.SerializerMethodField(
        help_text="Once succeeded: where to get the ZIP (yours only; a short-lived signed URL "
        "with S3). Null before."
    )

    class Meta:
        model = Export
        fields = ["id", "url", "format", "status", "progress", "download_url", "size_bytes",
                  "error", "selection", "created_at", "finished_at", "expires_at"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, export: Export) -> dict:
        return {"done": export.done, "total": export.total}

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_download_url(self, export: Export) -> str | None:
        if export.status != Export.Status.SUCCEEDED or not export.file:
            return None
        return files.export_url(self.context["request"], export)


class ExportCreatedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    url = serializers.URLField()


class CollectionCreateSerializer(JobOptionsSerializer):
    """Schema of ``POST /api/collections/``: one ZIP in ``archive``, or photos in ``images``."""

    archive = serializers.FileField(
        required=False, help_text="A ZIP of photos; each photo in it becomes a job."
    )
    images = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="Several photos (repeat the field); each becomes a job.",
    )
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Default: the ZIP's name."
    )


class ProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    done = serializers.IntegerField(help_text="Succeeded.")
    failed = serializers.IntegerField(help_text="Failed or cancelled.")


class RejectedFileSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The file's name (its path inside a ZIP).")
    reason = serializers.CharField()


class CollectionSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api-collection-detail")
    progress = ProgressSerializer(read_only=True)
    finished = serializers.BooleanField(source="is_finished", read_only=True)
    rejected = RejectedFileSerializer(many=True, read_only=True)
    jobs_url = serializers.SerializerMethodField(help_text="Its jobs: GET /api/jobs/?collection=")

    class Meta:
        model = Collection
        fields = ["id", "url", "name", "source", "created_at", "finished", "finished_at",
                  "progress", "rejected", "jobs_url"]  # fmt: skip

    def get_jobs_url(self, collection: Collection) -> str:
        return self.context["request"].build_absolute_uri(collection.jobs_path)


class CountSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="How many jobs this changed.")


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000, help_text="http(s) URL on a public address.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Event.values),
        allow_empty=False,
        help_text="Events to receive.",
    )


class WebhookSerializer(serializers.ModelSerializer):
    deliveries_url = serializers.HyperlinkedIdentityField(view_name="api-webhook-deliveries")
    events = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "created_at", "deliveries_url"]


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="Key of the X-Segweb-Signature HMAC; shown only in this answer."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "at", "outcome", "http_status", "error", "duration_ms"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "event", "status", "attempts", "next_attempt_at", "created_at",
                  "finished_at", "payload", "attempt_log"]  # fmt: skip
