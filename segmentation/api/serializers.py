"""API input and output shapes. Input is only parsed here; the photo itself is validated by
``uploads.validate_upload`` inside ``services.job_create``, exactly as for the pages."""

from __future__ import annotations

import math

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import files
from ..models import Detection, Job

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


class JobSummarySerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api-job-detail")
    labels = serializers.SerializerMethodField(help_text="Distinct classes detected.")
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "status", "url", "created_at", "finished_at", "original_filename",
            "width", "height", "model", "score_threshold", "labels", "thumbnail_url",
        ]  # fmt: skip

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_labels(self, job: Job) -> list[str]:
        return sorted({d.label for d in job.detections.all()})

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_thumbnail_url(self, job: Job) -> str | None:
        return files.file_url(self.context["request"], job, "thumbnail")


class JobSerializer(JobSummarySerializer):
    image_url = serializers.SerializerMethodField()
    overlay_url = serializers.SerializerMethodField()
    detections = DetectionSerializer(many=True, read_only=True)
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


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    usable = serializers.BooleanField(
        help_text="Whether jobs can use it: its files are here and workers load it."
    )
    reason = serializers.CharField(help_text="Why it cannot run; empty when usable.")
    default = serializers.BooleanField(help_text="The model 'auto' picks on this server.")
