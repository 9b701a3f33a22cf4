"""REST API views: parse input, call one service or query, serialize.

Every job query starts from ``Job.objects.for_user``: another user's job is a 404 on every
route, so its existence does not leak.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import files, health, services
from ..coco_export import job_to_coco
from ..inference import COCO_LABELS
from ..models import Detection, Job
from ..uploads import UploadError, describe_bytes
from .filters import JobFilter
from .serializers import (
    ErrorSerializer,
    JobCreateSerializer,
    JobOptionsSerializer,
    JobSerializer,
    JobSummarySerializer,
    ModelSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from .throttling import ScopedThrottle

ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="No valid token or session."),
    404: OpenApiResponse(ErrorSerializer, description="No such job (or not yours)."),
}


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A backing service is unavailable; try again shortly."


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT


class TokenView(APIView):
    """Get, or revoke, your API token."""

    throttle_scope = "token"

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else super().get_permissions()

    def get_throttles(self):
        return [ScopedThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, 400: ErrorSerializer, 429: ErrorSerializer},
        auth=[],
        summary="Exchange a username and password for your API token",
    )
    def post(self, request):
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(
            request,
            username=data.validated_data["username"],
            password=data.validated_data["password"],
        )
        if user is None:  # wrong password, unknown or deactivated user: one answer for all
            raise ValidationError({"detail": "Unable to sign in with these credentials."})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

    @extend_schema(responses={204: None, 401: ERRORS[401]}, summary="Revoke your token")
    def delete(self, request):
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenRotateView(APIView):
    @extend_schema(
        request=None,
        responses={200: TokenSerializer, 401: ERRORS[401]},
        summary="Replace your token with a new one (the old one stops working)",
    )
    def post(self, request):
        Token.objects.filter(user=request.user).delete()
        return Response({"token": Token.objects.create(user=request.user).key})


class JobPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request):
        # DRF silently ignores a malformed page_size; a client deserves to hear about it.
        raw = request.query_params.getlist(self.page_size_query_param)
        if raw and not all(
            value.isdigit() and 1 <= int(value) <= self.max_page_size for value in raw
        ):
            raise ValidationError({"page_size": "A whole number from 1 to 100."})
        return super().get_page_size(request)

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
    destroy=extend_schema(summary="Delete a job and its files", responses={204: None, **ERRORS}),
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
    throttle_scope = "job_create"
    lookup_value_converter = "uuid"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        jobs = Job.objects.for_user(self.request.user)
        if self.action == "list":
            labels_only = Detection.objects.only("id", "job_id", "rank", "label")
            return jobs.filter(owner=self.request.user).prefetch_related(
                Prefetch("detections", queryset=labels_only)
            )
        return jobs.prefetch_related("detections")

    def get_serializer_class(self):
        return JobSummarySerializer if self.action == "list" else JobSerializer

    def get_throttles(self):
        # A retry costs a worker what a new job costs: both count against the job rate.
        return [ScopedThrottle()] if self.action in ("create", "retry") else []

    @extend_schema(
        request={"multipart/form-data": JobCreateSerializer},
        responses={
            201: JobSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Not an acceptable photo or option."),
            401: ERRORS[401],
            413: OpenApiResponse(ErrorSerializer, description="File larger than the limit."),
            429: OpenApiResponse(ErrorSerializer, description="Too many jobs; see Retry-After."),
            503: OpenApiResponse(ErrorSerializer, description="File store unavailable."),
        },
        summary="Upload a photo; it is segmented on the queue",
    )
    def create(self, request):
        limit = settings.SEGWEB["MAX_UPLOAD_BYTES"] + 1024 * 1024  # room for the form fields
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
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
        except UploadError as exc:
            if exc.status == 413:
                raise PayloadTooLarge(exc.message) from exc
            raise ValidationError({"detail": exc.message}) from exc
        except services.StorageUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        body = JobSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})

    @extend_schema(
        request=None,
        summary="Queue a failed job again (its attempts keep counting)",
        responses={
            202: JobSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The job has not failed."),
            429: OpenApiResponse(ErrorSerializer, description="Too many jobs; see Retry-After."),
            503: OpenApiResponse(ErrorSerializer, description="Its model cannot run now."),
            **ERRORS,
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        job = self.get_object()
        try:
            job = services.job_retry(job=job)
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
        summary="Download a job's photo, overlay (PNG) or thumbnail (JPEG)",
        responses={
            (200, "image/*"): OpenApiTypes.BINARY,
            302: OpenApiResponse(description="Redirect to a signed S3 URL."),
            **ERRORS,
        },
    )
    def get(self, request, pk, kind: str):
        job = Job.objects.for_user(request.user).filter(pk=pk).first()
        if job is None or kind not in files.KINDS:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return files.serve(job, kind, attachment=request.query_params.get("download") == "1")


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
