"""REST API views: parse input, call one service or query, serialize.

Every job query starts from ``Job.objects.for_user`` (lists) or ``get_for`` (one job):
another user's job is a 404 on every route, so its existence does not leak; a job one may see
but not act on is a 403 saying why.
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_logged_in
from django.db.models import Prefetch
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import (
    APIException,
    NotFound,
    ValidationError,
)
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import datasets, files, health, services
from ..coco_export import job_to_coco
from ..decoding import DecodeBusy, decode_slot
from ..inference import COCO_LABELS, InvalidImageError
from ..models import Collection, Detection, Export, Job, Webhook
from ..quotas import QuotaExceeded
from ..uploads import UploadError, describe_bytes
from .exceptions import PayloadTooLarge
from .filters import JobFilter
from .parsers import declared_length
from .serializers import (
    CollectionCreateSerializer,
    CollectionSerializer,
    CountSerializer,
    ErrorSerializer,
    ExportCreatedSerializer,
    ExportCreateSerializer,
    ExportSerializer,
    JobCreateSerializer,
    JobOptionsSerializer,
    JobSerializer,
    JobSummarySerializer,
    JobThresholdSerializer,
    ModelSerializer,
    TokenRequestSerializer,
    TokenSerializer,
    WebhookCreatedSerializer,
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookSerializer,
)
from .throttling import JobCreateThrottle, ScopedThrottle, job_rate_take

ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="No valid token or session."),
    404: OpenApiResponse(ErrorSerializer, description="No such job (or not yours)."),
}
# A job one may see but not act on: a moderator without the permission for this action, or
# the owner of a job a moderator hid (its files and results are no longer served to them).
REFUSED = {
    403: OpenApiResponse(
        ErrorSerializer,
        description="You may see this job but not do this: a moderator lacking the "
        "permission, or the job was hidden by a moderator (the detail says when and why).",
    )
}


# What an upload (a photo, several, an archive) can be refused with.
UPLOAD_400 = (
    "Not an acceptable photo or option: not an image, damaged, a side under 8 px, one side "
    "more than 20 times the other, or more pixels than SEGWEB_MAX_MEGAPIXELS (all checked "
    "from the header, before decoding)."
)
UPLOAD_413 = (
    "A file or the request is larger than the limit, or it would pass your storage quota "
    "(SEGWEB_QUOTA_BYTES; the message says the quota and your usage)."
)
UPLOAD_429 = (
    "Too many jobs: the job rate (SEGWEB_JOB_CREATE_RATE, counted per photo) or your quota of "
    "jobs waiting or running (SEGWEB_QUOTA_QUEUED_JOBS); see Retry-After."
)
UPLOAD_503 = (
    "The file store is unavailable, or the server is busy decoding other photos "
    "(SEGWEB_DECODE_SLOTS); see Retry-After."
)

# A paginated list: a bad page_size, or a page past the end.
PAGE_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="page_size is not 1 to 100."),
    401: ERRORS[401],
    404: OpenApiResponse(ErrorSerializer, description="No such page."),
}


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A backing service is unavailable; try again shortly."


class TooManyJobs(APIException):
    """Over the job rate or the queued-jobs quota; ``wait`` becomes Retry-After."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, detail: str, wait: float) -> None:
        super().__init__(detail)
        self.wait = max(1, round(wait))


class Busy(ServiceUnavailable):
    def __init__(self, detail: str, wait: float) -> None:
        super().__init__(detail)
        self.wait = max(1, round(wait))


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT


class TooManyExports(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS


class FormatIsNotARenderer(DefaultContentNegotiation):
    """For routes whose ``?format=`` names a dataset format, not one of DRF's renderers."""

    settings = SimpleNamespace(URL_FORMAT_OVERRIDE=None)


def refused(exc: Exception) -> APIException:
    """The one mapping from the services' upload errors to API answers."""
    if isinstance(exc, services.StorageUnavailable):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, services.CollectionRefused):
        return ValidationError({"detail": exc.message, "rejected": exc.rejected})
    if isinstance(exc, UploadError) and exc.status == 413:
        return PayloadTooLarge(exc.message)
    if isinstance(exc, UploadError) and exc.status == 429:
        return TooManyJobs(exc.message, exc.wait)
    if isinstance(exc, UploadError) and exc.status == 503:
        return Busy(exc.message, exc.wait)
    if isinstance(exc, UploadError):
        return ValidationError({"detail": exc.message})
    raise TypeError(f"not an upload error: {exc!r}")


class TokenView(APIView):
    """Sign a client in (a token of its own) or out (the token it sent is revoked)."""

    throttle_scope = "token"

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else super().get_permissions()

    def get_throttles(self):
        return [ScopedThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, 400: ErrorSerializer, 429: ErrorSerializer},
        auth=[],
        summary="Exchange a username and password for a new API token (one per client)",
    )
    def post(self, request):
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # Django's own request: django-axes marks a locked-out sign-in on it, and its
        # middleware then answers 429 (accounts.lockout_response) instead of this view.
        user = authenticate(
            request._request,
            username=data.validated_data["username"],
            password=data.validated_data["password"],
        )
        if user is None:  # wrong password, unknown or deactivated user: one answer for all
            raise ValidationError({"detail": "Unable to sign in with these credentials."})
        token, key = services.user_token_create(user=user)
        user_logged_in.send(sender=type(user), request=request._request, user=user)
        return Response(TokenSerializer({"token": key, "expiry": token.expiry}).data)

    @extend_schema(
        responses={204: None, 400: ErrorSerializer, 401: ERRORS[401]},
        summary="Revoke the token this request was sent with",
    )
    def delete(self, request):
        if request.auth is None:  # a browser session: it has no token to revoke
            raise ValidationError(
                {"detail": "No token in this request; DELETE /api/auth/tokens/ revokes all."}
            )
        services.token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenRotateView(APIView):
    @extend_schema(
        request=None,
        responses={200: TokenSerializer, 401: ERRORS[401]},
        summary="Replace the token this request was sent with (the old one stops working)",
    )
    def post(self, request):
        if request.auth is not None:
            services.token_revoke(token=request.auth)
        token, key = services.user_token_create(user=request.user)
        return Response(TokenSerializer({"token": key, "expiry": token.expiry}).data)


class TokensView(APIView):
    @extend_schema(
        responses={204: None, 401: ERRORS[401]},
        summary="Revoke every token of yours (sign every client out)",
    )
    def delete(self, request):
        services.user_tokens_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request):
        # DRF silently ignores a malformed page_size; a client deserves to hear about it.
        raw = request.query_params.getlist(self.page_size_query_param)
        if raw and not all(self._page_size_ok(value) for value in raw):
            raise ValidationError({"page_size": "A whole number from 1 to 100."})
        return super().get_page_size(request)

    def _page_size_ok(self, value: str) -> bool:
        # ASCII digits only: str.isdigit() also accepts "²" and "⑤", which int() refuses; and
        # a short string only: int() refuses more than 4,300 digits.
        return (
            value.isascii()
            and value.isdigit()
            and len(value) <= 6
            and 1 <= int(value) <= self.max_page_size
        )

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
            if parameter["name"] == self.page_query_param:
                parameter["schema"].update(minimum=1)
        return parameters


@extend_schema_view(
    list=extend_schema(
        summary="Your jobs, newest first",
        parameters=[
            OpenApiParameter(
                "has",
                str,
                many=True,
                explode=True,
                description="LABEL or LABEL:N (N from 1 to 1000): jobs with at least N instances "
                "of LABEL scoring at least their threshold. Repeat for all of them "
                "(has=person:2&has=dog), or separate by spaces. Hidden jobs never match.",
            )
        ],
        responses={
            200: JobSummarySerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description="A filter value is invalid."),
            401: ERRORS[401],
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        },
    ),
    retrieve=extend_schema(
        summary="One job with its detections", responses={200: JobSerializer, **ERRORS}
    ),
    destroy=extend_schema(
        summary="Delete a job and its files (its owner may, even once it is hidden)",
        responses={204: None, **REFUSED, **ERRORS},
    ),
    partial_update=extend_schema(
        summary="Change a job's score threshold (the model does not run again)",
        request=JobThresholdSerializer,
        responses={
            200: JobSerializer,
            400: OpenApiResponse(
                ErrorSerializer, description="Not a number, or outside [kept_min_score, 1]."
            ),
            **REFUSED,
            429: OpenApiResponse(ErrorSerializer, description="Too many changes; see Retry-After."),
            **ERRORS,
        },
    ),
)
class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Job.objects.none()  # for the schema generator; requests use get_queryset()
    pagination_class = JobPagination
    filterset_class = JobFilter
    lookup_value_converter = "uuid"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @property
    def throttle_scope(self) -> str:
        return {"partial_update": "threshold", "export": "export"}.get(self.action, "job_create")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        shown = Detection.objects.above_threshold()
        if self.action == "list":
            # The user's own history, hidden jobs included (marked, their results withheld).
            labels_only = shown.only("id", "job_id", "rank", "label", "score")
            return (
                Job.objects.for_user(self.request.user)
                .filter(owner=self.request.user)
                .prefetch_related(Prefetch("detections", queryset=labels_only))
            )
        return Job.objects.prefetch_related(Prefetch("detections", queryset=shown))

    #: What each route does to its job, in the terms of ``Job.objects.for_user``.
    ACTIONS = {"partial_update": "change", "retry": "change", "destroy": "delete",
               "coco": "download", "export": "download"}  # fmt: skip

    def get_object(self) -> Job:
        action = self.ACTIONS.get(self.action, "view")
        return job_for(self.request, self.kwargs["pk"], action, self.get_queryset())

    def get_serializer_class(self):
        return JobSummarySerializer if self.action == "list" else JobSerializer

    def list(self, request):
        filters = JobFilter(request.query_params, queryset=self.get_queryset(), request=request)
        if not filters.is_valid():
            raise ValidationError(filters.errors)
        page = self.paginate_queryset(filters.job_page())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_throttles(self):
        # A retry costs a worker what a new job costs: both count against the job rate; a
        # threshold change has its own rate (throttle_scope).
        if self.action in ("create", "retry"):
            return [JobCreateThrottle()]
        if self.action in ("partial_update", "export"):
            return [ScopedThrottle()]
        return []

    @extend_schema(
        request={"multipart/form-data": JobCreateSerializer},
        responses={
            201: JobSerializer,
            400: OpenApiResponse(ErrorSerializer, description=UPLOAD_400),
            401: ERRORS[401],
            413: OpenApiResponse(ErrorSerializer, description=UPLOAD_413),
            429: OpenApiResponse(ErrorSerializer, description=UPLOAD_429),
            503: OpenApiResponse(ErrorSerializer, description=UPLOAD_503),
        },
        summary="Upload a photo; it is segmented on the queue",
    )
    def create(self, request):
        limit = settings.SEGWEB["MAX_UPLOAD_BYTES"] + 1024 * 1024  # room for the form fields
        if declared_length(request) > limit:
            raise PayloadTooLarge(f"The request is larger than {describe_bytes(limit)}.")
        upload = request.FILES.get("image")
        if upload is None and "image" in request.data:
            raise ValidationError({"detail": "'image' must be a file sent as multipart/form-data."})
        options = JobOptionsSerializer(
            data={
                k: request.data[k]
                for k in ("score_threshold", "model", "precision")
                if k in request.data
            }
        )
        options.is_valid(raise_exception=True)
        try:
            job = services.job_create(
                owner=request.user,
                upload=upload,
                score_threshold=options.validated_data.get("score_threshold"),
                model=options.validated_data.get("model"),
                precision=options.validated_data.get("precision"),
            )
        except (UploadError, services.StorageUnavailable) as exc:
            raise refused(exc) from exc
        body = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})

    def partial_update(self, request, pk=None):
        job = self.get_object()
        data = JobThresholdSerializer(data=request.data)
        if not data.is_valid():
            errors = data.errors
            if "score_threshold" in errors:  # missing or not a number: say what would do
                errors = {"score_threshold": [services.threshold_range_message(job)]}
            raise ValidationError(errors)
        try:
            services.job_set_threshold(job=job, threshold=data.validated_data["score_threshold"])
        except services.ThresholdError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        job = self.get_queryset().get(pk=job.pk)  # detections again, at the new threshold
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(
        request=None,
        summary="Queue a failed job again (its attempts keep counting)",
        responses={
            202: JobSerializer,
            **REFUSED,
            409: OpenApiResponse(ErrorSerializer, description="The job has not failed."),
            429: OpenApiResponse(ErrorSerializer, description=UPLOAD_429),
            503: OpenApiResponse(ErrorSerializer, description="Its model cannot run now."),
            **ERRORS,
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        job = self.get_object()
        try:
            job = services.job_retry(job=job)
        except QuotaExceeded as exc:
            raise refused(exc) from exc
        except services.IllegalTransition as exc:
            raise Conflict(str(exc)) from exc
        except services.ModelNotRunning as exc:
            raise ServiceUnavailable(str(exc)) from exc
        body = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, job: Job) -> None:
        services.job_delete(job=job)

    @extend_schema(
        summary="The detections as a COCO file (images, categories, annotations with scores)",
        responses={
            200: OpenApiTypes.OBJECT,
            409: OpenApiResponse(ErrorSerializer, description="The job has not succeeded."),
            **REFUSED,
            **ERRORS,
        },
    )
    @action(detail=True, methods=["get"])
    def coco(self, request, pk=None):
        job = self.get_object()
        if job.status != Job.Status.SUCCEEDED:
            return Response(
                {"detail": f"The job is {job.status}; detections exist once it has succeeded."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(job_to_coco(job))

    @extend_schema(
        summary="The job as a one-photo dataset: a ZIP in the format asked for",
        parameters=[
            OpenApiParameter(
                "format",
                str,
                enum=Export.Format.values,
                required=True,
                description="coco (RLE masks), coco_polygons, yolo, masks (PNG per instance), "
                "cutouts (RGBA PNG per instance: the job page's 'all cut-outs'). Layouts: "
                "README, 'Exports'.",
            )
        ],
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            400: OpenApiResponse(ErrorSerializer, description="No such format."),
            409: OpenApiResponse(ErrorSerializer, description="The job has not succeeded."),
            413: OpenApiResponse(
                ErrorSerializer, description="Too many pixels to draw in one request."
            ),
            429: OpenApiResponse(ErrorSerializer, description="Too many; see Retry-After."),
            503: OpenApiResponse(ErrorSerializer, description="The photo cannot be read."),
            **REFUSED,
            **ERRORS,
        },
    )
    @action(detail=True, methods=["get"], content_negotiation_class=FormatIsNotARenderer)
    def export(self, request, pk=None):
        job = self.get_object()
        fmt = request.query_params.get("format", "")
        if fmt not in Export.Format.values:
            raise ValidationError({"format": f"One of: {', '.join(Export.Format.values)}."})
        if job.status != Job.Status.SUCCEEDED:
            raise Conflict(f"The job is {job.status}; it can be exported once it has succeeded.")
        if fmt != Export.Format.COCO:
            _check_drawing_cost(job, len(datasets.shown_detections(job)))
        # Served (and closed) by the response; on disk past 32 MB.
        archive = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115
        # Every format may decode the photo in this process (cut-outs always; the others for a
        # photo that is not stored as JPEG or PNG, or turned by EXIF): one of its decoding slots.
        try:
            with decode_slot():
                datasets.write_dataset(archive, fmt, [job], description=f"segweb job {job.pk}")
        except datasets.PhotoUnavailable as exc:
            archive.close()
            raise ServiceUnavailable(str(exc)) from exc
        except DecodeBusy as exc:
            archive.close()
            raise Busy(str(exc), exc.wait) from exc
        archive.seek(0)
        name = f"{datasets.safe_stem(job)}-{fmt}.zip"
        return files.serve_bytes(archive, name, "application/zip", attachment=True)


def job_for(request, pk, action: str, jobs=None) -> Job:
    """The job if the user may do ``action`` to it: 404 if they may not see it, 403 (Django's
    ``PermissionDenied``, saying why) if they may see it but not do this."""
    try:
        return (jobs if jobs is not None else Job.objects).get_for(request.user, pk, action)
    except Job.DoesNotExist:
        raise NotFound("No such job (or not yours).") from None


def _check_drawing_cost(job: Job, instances: int) -> None:
    megapixels = instances * job.width * job.height / 1e6
    limit = settings.SEGWEB["DIRECT_EXPORT_MAX_MEGAPIXELS"]
    if megapixels > limit:
        raise PayloadTooLarge(
            f"{instances} instances on a {job.width}x{job.height} photo are too many pixels to "
            f"draw in one request ({megapixels:.0f} MP, limit {limit}); export the job with "
            'POST /api/exports/ {"format": ..., "jobs": [id]} instead.'
        )


class InstanceFileView(APIView):
    """One instance of a job: its mask, or its cut-out."""

    throttle_scope = "export"
    throttle_classes = [ScopedThrottle]

    @extend_schema(
        operation_id="jobs_instance_file_retrieve",
        parameters=[
            OpenApiParameter(
                "index",
                int,
                OpenApiParameter.PATH,
                description="The instance's index in the job's detections (at its current "
                "threshold, best first).",
            ),
            OpenApiParameter(
                "kind",
                str,
                OpenApiParameter.PATH,
                enum=["cutout", "mask"],
                description="cutout: RGBA PNG of the instance's box (clipped to the photo), "
                "opaque on the mask, transparent elsewhere; mask: PNG of the photo's size, "
                "255 on the mask's pixels, 0 elsewhere.",
            ),
            OpenApiParameter("download", str, enum=["1"], description="As an attachment."),
        ],
        summary="One instance's cut-out or mask (PNG)",
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            409: OpenApiResponse(ErrorSerializer, description="The job has not succeeded."),
            429: OpenApiResponse(ErrorSerializer, description="Too many; see Retry-After."),
            503: OpenApiResponse(ErrorSerializer, description="The photo cannot be read."),
            **REFUSED,
            **ERRORS,
        },
    )
    def get(self, request, pk, index: int, kind: str):
        if kind not in ("cutout", "mask"):
            raise NotFound("Not found.")
        job = job_for(request, pk, "download")
        if job.status != Job.Status.SUCCEEDED:
            raise Conflict(f"The job is {job.status}; instances exist once it has succeeded.")
        shown = datasets.shown_detections(job)
        if index >= len(shown):
            raise NotFound(
                f"The job shows {len(shown)} instance{'s' if len(shown) != 1 else ''} at its "
                f"threshold; indexes go from 0 to {len(shown) - 1}."
            )
        detection = shown[index]
        try:
            if kind == "mask":
                data = datasets.mask_png(detection)
            else:
                with decode_slot():  # the photo is decoded in this process
                    data = datasets.cutout_png(datasets.load_photo(job), detection)
        except (datasets.PhotoUnavailable, InvalidImageError) as exc:
            raise ServiceUnavailable("The stored photo could not be read.") from exc
        except DecodeBusy as exc:
            raise Busy(str(exc), exc.wait) from exc
        name = f"{datasets.safe_stem(job)}-{index}-{detection.label.replace(' ', '_')}-{kind}.png"
        attachment = request.query_params.get("download") == "1"
        return files.serve_bytes(data, name, "image/png", attachment=attachment)


@extend_schema_view(
    list=extend_schema(
        summary="Your exports, newest first",
        responses={
            200: ExportSerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description="A bad page_size."),
            401: ERRORS[401],
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        },
    ),
    retrieve=extend_schema(
        summary="An export's status, progress and, once it succeeded, its download_url",
        responses={200: ExportSerializer, **ERRORS},
    ),
    destroy=extend_schema(summary="Delete an export and its file", responses={204: None, **ERRORS}),
)
class ExportViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Bulk exports: a worker writes the selected jobs into a ZIP, kept for a few days."""

    queryset = Export.objects.none()
    serializer_class = ExportSerializer
    pagination_class = JobPagination
    filter_backends: list = []
    lookup_value_converter = "uuid"
    throttle_scope = "export"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Export.objects.none()
        return Export.objects.for_user(self.request.user)

    def get_throttles(self):
        return [ScopedThrottle()] if self.action == "create" else []

    @extend_schema(
        request=ExportCreateSerializer,
        summary="Export jobs (by id, or by the job list's filters) as a ZIP dataset",
        responses={
            202: ExportCreatedSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="Bad format or selection: unknown ids, unfinished jobs, nothing or "
                "too many selected, a malformed filter.",
            ),
            401: ERRORS[401],
            413: OpenApiResponse(ErrorSerializer, description="The request body is too large."),
            429: OpenApiResponse(
                ErrorSerializer, description="Too many exports in progress, or too many requests."
            ),
        },
    )
    def create(self, request):
        data = ExportCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            export = services.export_create(
                owner=request.user,
                format=data.validated_data["format"],
                job_ids=data.validated_data.get("jobs"),
                filters=data.validated_data.get("filters"),
            )
        except services.ExportRefused as exc:
            if exc.status == 429:
                raise TooManyExports(str(exc)) from exc
            raise ValidationError({"detail": str(exc)}) from exc
        url = request.build_absolute_uri(reverse("api-export-detail", args=[export.pk]))
        return Response(
            {"id": export.pk, "status": export.status, "url": url},
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": url},
        )

    def perform_destroy(self, export: Export) -> None:
        services.export_delete(export=export)

    @extend_schema(
        summary="Download a finished export (a redirect to a signed URL with S3)",
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            302: OpenApiResponse(description="Redirect to a signed S3 URL."),
            409: OpenApiResponse(ErrorSerializer, description="Not finished, or failed."),
            **ERRORS,
        },
    )
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        export = self.get_object()
        if export.status != Export.Status.SUCCEEDED or not export.file:
            raise Conflict(f"The export is {export.status}; download it once it has succeeded.")
        return files.serve_export(request, export)


@extend_schema_view(
    list=extend_schema(
        summary="Your collections, newest first",
        responses={200: CollectionSerializer(many=True), **PAGE_ERRORS},
    ),
    retrieve=extend_schema(
        summary="One collection and its progress",
        responses={200: CollectionSerializer, **ERRORS},
    ),
    destroy=extend_schema(
        summary="Delete a collection, its jobs and their files",
        responses={204: None, **REFUSED, **ERRORS},
    ),
)
class CollectionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Photos sent together (several files, or one ZIP) as one collection of jobs."""

    queryset = Collection.objects.none()
    serializer_class = CollectionSerializer
    pagination_class = JobPagination
    throttle_scope = "job_create"
    lookup_value_converter = "uuid"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Collection.objects.none()
        collections = Collection.objects.with_progress()
        if self.action == "list":
            return collections.for_user(self.request.user).filter(owner=self.request.user)
        return collections

    ACTIONS = {"cancel": "change", "retry": "change", "destroy": "delete"}

    def get_object(self) -> Collection:
        action = self.ACTIONS.get(self.action, "view")
        try:
            return self.get_queryset().get_for(self.request.user, self.kwargs["pk"], action)
        except Collection.DoesNotExist:
            raise NotFound("No such collection (or not yours).") from None

    def get_throttles(self):
        return []  # create and retry count each photo against the job rate themselves

    @extend_schema(
        request={"multipart/form-data": CollectionCreateSerializer},
        responses={
            201: CollectionSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="Not a usable archive, no acceptable photo (`rejected` says why for "
                "each), or a bad option.",
            ),
            401: ERRORS[401],
            413: OpenApiResponse(
                ErrorSerializer,
                description="Archive or request too large, or over your storage quota "
                "(SEGWEB_QUOTA_BYTES).",
            ),
            429: OpenApiResponse(
                ErrorSerializer,
                description=UPLOAD_429 + " Every photo counts: nothing is kept when they do not "
                "all fit.",
            ),
            503: OpenApiResponse(ErrorSerializer, description=UPLOAD_503),
        },
        summary="Upload a ZIP or several photos; each photo becomes a job of one collection",
    )
    def create(self, request):
        limit = settings.SEGWEB["ARCHIVE_MAX_BYTES"] + 1024 * 1024  # room for the form fields
        if declared_length(request) > limit:
            raise PayloadTooLarge(f"The request is larger than {describe_bytes(limit)}.")
        # More files than DATA_UPLOAD_MAX_NUMBER_FILES: Django refuses the body here, and the
        # project's 400 handler (views.bad_request) answers with a JSON detail.
        archive = request.FILES.get("archive")
        images = request.FILES.getlist("images")
        if archive is not None and images:
            raise ValidationError({"detail": "Send either one 'archive' or 'images', not both."})
        if archive is None and not images:
            if "archive" in request.data or "images" in request.data:
                raise ValidationError({"detail": "Files must be sent as multipart/form-data."})
            raise ValidationError(
                {"detail": "Attach a ZIP in 'archive', or photos in 'images' (repeated)."}
            )
        options = JobOptionsSerializer(
            data={k: request.data[k] for k in ("score_threshold", "model") if k in request.data}
        )
        options.is_valid(raise_exception=True)
        common = {
            "owner": request.user,
            "name": str(request.data.get("name", "")),
            "score_threshold": options.validated_data.get("score_threshold"),
            "model": options.validated_data.get("model"),
        }
        try:
            services.job_rate_draw_photos(user=request.user, photos=images, archive=archive)
            if archive is not None:
                collection = services.collection_create_from_archive(archive=archive, **common)
            else:
                collection = services.collection_create_from_photos(uploads=images, **common)
        except (UploadError, services.StorageUnavailable) as exc:
            raise refused(exc) from exc
        collection = self.get_queryset().get(pk=collection.pk)
        body = self.get_serializer(collection).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})

    def perform_destroy(self, collection: Collection) -> None:
        services.collection_delete(collection=collection)

    @extend_schema(
        request=None,
        responses={200: CountSerializer, **REFUSED, **ERRORS},
        summary="Cancel the queued jobs (running ones finish; cancelled ones count as failed)",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return Response({"count": services.collection_cancel(collection=self.get_object())})

    @extend_schema(
        request=None,
        responses={
            200: CountSerializer,
            429: OpenApiResponse(ErrorSerializer, description=UPLOAD_429),
            503: OpenApiResponse(ErrorSerializer, description="Their model cannot run now."),
            **REFUSED,
            **ERRORS,
        },
        summary="Queue the failed (and cancelled) jobs again",
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        collection = self.get_object()
        wait = job_rate_take(user=request.user, count=max(1, collection.progress["failed"]))
        if wait is not None:
            raise TooManyJobs(f"Too many jobs for now; retry in {wait:.0f} seconds.", wait)
        try:
            count = services.collection_retry(collection=collection)
        except QuotaExceeded as exc:
            raise refused(exc) from exc
        except services.ModelNotRunning as exc:
            raise ServiceUnavailable(str(exc)) from exc
        return Response({"count": count})


@extend_schema_view(
    list=extend_schema(
        summary="Your webhooks", responses={200: WebhookSerializer(many=True), **PAGE_ERRORS}
    ),
    retrieve=extend_schema(summary="One webhook", responses={200: WebhookSerializer, **ERRORS}),
    destroy=extend_schema(summary="Delete a webhook", responses={204: None, **ERRORS}),
)
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """URLs told (a signed POST) when your jobs or collections finish."""

    queryset = Webhook.objects.none()
    serializer_class = WebhookSerializer
    pagination_class = JobPagination
    lookup_value_converter = "uuid"
    throttle_scope = "job_create"  # creating one resolves its host name: not for free

    def get_throttles(self):
        return [ScopedThrottle()] if self.action == "create" else []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Webhook.objects.none()
        # Webhooks are private to their owner, staff included: the secret and URL are theirs.
        return Webhook.objects.filter(owner=self.request.user)

    @extend_schema(
        request=WebhookCreateSerializer,
        responses={
            201: WebhookCreatedSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="Bad URL (not http(s), or a private, loopback, link-local, "
                "multicast or reserved address), unknown event, or too many webhooks.",
            ),
            401: ERRORS[401],
        },
        summary="Register a webhook; the answer holds its signing secret (shown once)",
    )
    def create(self, request):
        data = WebhookCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            webhook = services.webhook_create(owner=request.user, **data.validated_data)
        except services.InvalidWebhook as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        body = WebhookCreatedSerializer(webhook, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, webhook: Webhook) -> None:
        services.webhook_delete(webhook=webhook)

    @extend_schema(
        summary="Deliveries to this webhook, newest first, with every attempt",
        responses={200: WebhookDeliverySerializer(many=True), **ERRORS, **PAGE_ERRORS},
    )
    @action(detail=True, methods=["get"], url_name="deliveries")
    def deliveries(self, request, pk=None):
        webhook = self.get_object()
        deliveries = webhook.deliveries.prefetch_related("attempt_log")
        page = self.paginate_queryset(deliveries)
        body = WebhookDeliverySerializer(page, many=True).data
        return self.get_paginated_response(body)


class JobFileView(APIView):
    """A job's photo, overlay or thumbnail (or a redirect to a signed S3 URL)."""

    @extend_schema(
        operation_id="jobs_file_retrieve",
        parameters=[
            OpenApiParameter(
                "kind",
                str,
                OpenApiParameter.PATH,
                enum=sorted(files.KINDS),
                description="Which file",
            )
        ],
        summary="Download a job's photo, its preview (JPEG, 1600 px), overlay (PNG) or "
        "thumbnail (JPEG; the overlay's once the job has succeeded)",
        responses={
            (200, "image/*"): OpenApiTypes.BINARY,
            302: OpenApiResponse(description="Redirect to a signed S3 URL."),
            **REFUSED,
            **ERRORS,
        },
    )
    def get(self, request, pk, kind: str):
        if kind not in files.KINDS:
            raise NotFound("Not found.")
        job = job_for(request, pk, "download")
        try:
            return files.serve(job, kind, attachment=request.query_params.get("download") == "1")
        except services.StorageUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except DecodeBusy as exc:
            raise Busy(str(exc), exc.wait) from exc


class ModelsView(APIView):
    @extend_schema(
        summary="The models segweb knows, whether each can run on this server, and why not",
        responses={200: ModelSerializer(many=True), 401: ERRORS[401]},
    )
    def get(self, request):
        return Response(ModelSerializer(health.model_statuses(), many=True).data)


class LabelsView(APIView):
    @extend_schema(
        summary="The 80 COCO class names detections can have",
        responses={
            200: serializers.ListSerializer(child=serializers.CharField()),
            401: ERRORS[401],
        },
    )
    def get(self, request):
        return Response(list(COCO_LABELS))
