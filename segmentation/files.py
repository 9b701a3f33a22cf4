"""Serving private files: through an owner-checked view (local disk) or a signed URL (S3)."""

from __future__ import annotations

import mimetypes

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import content_disposition_header

from . import services
from .models import Export, Job

#: What each job file is called by URLs, and the model fields that hold it, first found wins:
#: a succeeded job's thumbnail is its overlay's; the preview of a job run before previews
#: existed is the photo itself.
KINDS = {
    "image": ("image",),
    "preview": ("preview", "image"),
    "overlay": ("overlay",),
    "thumbnail": ("overlay_thumbnail", "thumbnail"),
}
#: Files drawn from the detections at the job's current threshold.
DRAWN = {"overlay", "thumbnail"}


def uses_signed_urls() -> bool:
    return bool(settings.AWS_STORAGE_BUCKET_NAME)


def stored_name(job: Job, kind: str) -> str:
    if kind not in KINDS:
        raise Http404("No such file.")
    name = _name(job, kind)
    if not name:
        raise Http404("This job has no such file (yet).")
    return name


def _name(job: Job, kind: str) -> str:
    return next((n for n in (getattr(job, f).name for f in KINDS[kind]) if n), "")


def version(job: Job) -> str:
    """Changes whenever a drawn file's content does: URLs carry it, so caches never go stale."""
    return f"{job.score_threshold:g}"


def download_name(job: Job, kind: str) -> str:
    stem = job.original_filename.rsplit(".", 1)[0] or "photo"
    if kind == "overlay":
        return f"{stem}-overlay.png"
    if kind in ("thumbnail", "preview"):
        return f"{stem}-{kind}.jpg"
    return job.original_filename


def serve(job: Job, kind: str, *, attachment: bool = False) -> HttpResponse:
    """The file itself (local storage) or a redirect to a short-lived signed URL (S3).

    The caller has already checked that the viewer may see ``job``. An overlay or thumbnail
    not yet drawn at the job's current threshold is drawn first (``StorageUnavailable`` when
    the store fails, ``decoding.DecodeBusy`` when no decoding slot frees up in time).
    """
    if kind in DRAWN:
        job = services.job_overlay_current(job=job)
    name = stored_name(job, kind)
    if uses_signed_urls():
        return HttpResponseRedirect(signed_url(name, job, kind, attachment=attachment))
    try:
        handle = default_storage.open(name, "rb")
    except FileNotFoundError as exc:
        raise Http404("The file is missing from storage.") from exc
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = FileResponse(
        handle,
        content_type=content_type,
        as_attachment=attachment,
        filename=download_name(job, kind),
    )
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def signed_url(name: str, job: Job, kind: str, *, attachment: bool = False) -> str:
    params = {}
    if attachment:
        params["ResponseContentDisposition"] = content_disposition_header(
            True, download_name(job, kind)
        )
    return default_storage.url(name, parameters=params or None, expire=settings.SIGNED_URL_SECONDS)


def file_url(request, job: Job, kind: str) -> str | None:
    """Where an API client fetches a job file: a signed S3 URL, or the owner-checked API route."""
    name = _name(job, kind)
    if not name:
        return None
    stale = kind in DRAWN and job.overlay_threshold != job.score_threshold
    if uses_signed_urls() and not stale:
        return signed_url(name, job, kind)
    # Through the API route, which draws a stale overlay before serving (or redirecting).
    url = reverse("api-job-file", args=[job.pk, kind])
    if kind in DRAWN:
        url += f"?v={version(job)}"
    return request.build_absolute_uri(url)


# --- Made on request: masks, cut-outs, exports -----------------------------------------------


def serve_bytes(
    data, filename: str, content_type: str, *, attachment: bool = False
) -> HttpResponse:
    """A file made for this request (bytes, or a file object read in chunks)."""
    if isinstance(data, bytes):
        response = HttpResponse(data, content_type=content_type)
        response["Content-Disposition"] = content_disposition_header(attachment, filename)
    else:
        response = FileResponse(
            data, content_type=content_type, as_attachment=attachment, filename=filename
        )
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def export_filename(export: Export) -> str:
    return f"segweb-{export.format}-{export.created_at:%Y%m%d-%H%M}.zip"


def export_url(request, export: Export) -> str:
    """Where the owner downloads an export: a signed S3 URL, or the owner-checked API route."""
    if uses_signed_urls():
        disposition = content_disposition_header(True, export_filename(export))
        return default_storage.url(
            export.file.name,
            parameters={"ResponseContentDisposition": disposition},
            expire=settings.SIGNED_URL_SECONDS,
        )
    return request.build_absolute_uri(reverse("api-export-download", args=[export.pk]))


def serve_export(request, export: Export) -> HttpResponse:
    """The export's ZIP (local storage) or a redirect to its signed URL (S3)."""
    if uses_signed_urls():
        return HttpResponseRedirect(export_url(request, export))
    try:
        handle = default_storage.open(export.file.name, "rb")
    except FileNotFoundError as exc:
        raise Http404("The export's file is missing from storage.") from exc
    return serve_bytes(handle, export_filename(export), "application/zip", attachment=True)
