"""HTML pages. Each view parses input, calls one service or query, and renders."""

from __future__ import annotations

import hmac
import json
from math import ceil

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from knox.models import get_token_model

from . import files, health, metrics, results, search, services
from .api.filters import JobFilter
from .api.parsers import declared_length
from .api.throttling import job_rate_take, rate_wait
from .coco_export import job_to_coco
from .decoding import DecodeBusy
from .forms import SignupForm, UploadForm, WebhookForm, unavailable_models
from .models import Collection, Export, Job, UserClass, Webhook
from .quotas import QuotaExceeded
from .uploads import RequestRefused, UploadError, describe_bytes

MAX_FILES_PER_POST = 20


def home(request: HttpRequest) -> HttpResponse:
    return redirect("job-list" if request.user.is_authenticated else "login")


# --- Upload ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """The upload form without JavaScript (with it, the page sends the photos to the API).

    One photo becomes a job, several a collection, one ZIP a collection of its photos, through
    the services the API calls, under the same job rate counted per photo: the whole form is
    refused (429, nothing kept) when the photos do not all fit in what is left of it.
    """
    if request.method == "GET":
        return render(request, "segmentation/upload.html", _upload_context(UploadForm()))

    # Several photos, or one ZIP (with room for the form fields).
    limit = max(
        settings.SEGWEB["MAX_UPLOAD_BYTES"] * MAX_FILES_PER_POST,
        settings.SEGWEB["ARCHIVE_MAX_BYTES"] + 1024 * 1024,
    )
    if declared_length(request) > limit:
        # Refused before Django reads the body into temporary files.
        message = f"Too much data in one request (limit {describe_bytes(limit)})."
        return _upload_refused(request, UploadError(message, 413))

    form = UploadForm(request.POST, request.FILES)
    uploads = request.FILES.getlist("images")
    if not form.is_valid():
        message = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
        return _upload_refused(request, UploadError(message), form)
    if not uploads:
        return _upload_refused(request, UploadError("Choose at least one photo."), form)
    if len(uploads) > MAX_FILES_PER_POST:
        message = f"At most {MAX_FILES_PER_POST} photos at once."
        return _upload_refused(request, UploadError(message), form)
    archive = uploads[0] if len(uploads) == 1 and _is_zip(uploads[0]) else None
    options = {
        "owner": request.user,
        "score_threshold": form.cleaned_data["score_threshold"],
        "model": form.cleaned_data["model"],
    }
    try:
        services.job_rate_draw_photos(user=request.user, photos=uploads, archive=archive)
        if archive is not None:
            collection = services.collection_create_from_archive(archive=archive, **options)
        elif len(uploads) > 1:
            collection = services.collection_create_from_photos(uploads=uploads, **options)
        else:
            job = services.job_create(
                upload=uploads[0], precision=form.cleaned_data.get("precision"), **options
            )
    except services.CollectionRefused as exc:
        errors = [{"file": r["name"], "error": r["reason"]} for r in exc.rejected]
        return _upload_refused(request, exc, form, file_errors=errors)
    except RequestRefused as exc:  # a quota, the job rate, a busy server: not about a photo
        return _upload_refused(request, exc, form)
    except UploadError as exc:
        errors = [{"file": uploads[0].name, "error": exc.message}] if len(uploads) == 1 else []
        return _upload_refused(request, exc, form, file_errors=errors)
    except services.StorageUnavailable as exc:
        return _upload_refused(request, UploadError(str(exc), 503), form)
    if archive is None and len(uploads) == 1:
        return redirect("job-detail", pk=job.pk)
    messages.success(request, f"{collection.progress['total']} photos queued.")
    return redirect("collection-detail", pk=collection.pk)


def _is_zip(upload) -> bool:
    """A ZIP by its name or its first bytes (a local file header); anything else is a photo."""
    upload.seek(0)
    head = upload.read(4)
    upload.seek(0)
    return head == b"PK\x03\x04" or (upload.name or "").lower().endswith(".zip")


def _upload_refused(request, error: UploadError, form=None, **extra) -> HttpResponse:
    """The upload page again, with why (a file's own error goes next to its name)."""
    context = _upload_context(form or UploadForm(), **extra)
    if not extra.get("file_errors") or isinstance(error, services.CollectionRefused):
        context["form_error"] = error.message
    response = render(request, "segmentation/upload.html", context, status=error.status)
    if error.wait:
        response["Retry-After"] = str(max(1, round(error.wait)))
    return response


def _upload_context(form: UploadForm, **extra) -> dict:
    return {
        "form": form,
        "max_upload": describe_bytes(settings.SEGWEB["MAX_UPLOAD_BYTES"]),
        "max_bytes": settings.SEGWEB["MAX_UPLOAD_BYTES"],
        "max_megapixels": settings.SEGWEB["MAX_PIXELS"] / 1e6,
        "max_files": MAX_FILES_PER_POST,
        "archive_max_files": settings.SEGWEB["ARCHIVE_MAX_MEMBERS"],
        "archive_max_bytes": settings.SEGWEB["ARCHIVE_MAX_BYTES"],
        "archive_max": describe_bytes(settings.SEGWEB["ARCHIVE_MAX_BYTES"]),
        "unavailable_models": unavailable_models(),
        **extra,
    }


# --- History --------------------------------------------------------------------------------


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    """The history: the API's job filters (one FilterSet), the class facets, the export form."""
    mine = Job.objects.for_user(request.user).filter(owner=request.user).only(*_CARD_FIELDS)
    query = request.GET.copy()
    for key in [k for k in query if not any(query.getlist(k))]:
        del query[key]  # the form's "Any status" and an empty search are no filter here
    filters = JobFilter(query, queryset=mine, request=request)
    valid = filters.is_valid()
    if valid:
        page = Paginator(filters.job_page(), settings.SEGWEB["HISTORY_PAGE_SIZE"]).get_page(
            request.GET.get("page")
        )
        conditions = filters.conditions
    else:
        page = Paginator([], 1).get_page(1)
        conditions = []
    chips = results.chips_for(_shown(page.object_list, request.user))
    cards = [(job, chips.get(job.pk, [])) for job in page.object_list]
    searched = {c.label for c in conditions}
    facets = [
        {
            "label": label,
            "jobs": jobs,
            "active": label in searched,
            "query": _facet_query(request, conditions, label),
        }
        for label, jobs in UserClass.objects.filter(owner=request.user, jobs__gt=0)
        .order_by("-jobs", "label")
        .values_list("label", "jobs")
    ]
    current_status = request.GET.get("status", "")
    return render(
        request,
        "segmentation/job_list.html",
        {
            "page": page,
            "cards": cards,
            "facets": facets,
            "statuses": Job.Status.choices,
            "search_text": search.format_conditions(conditions)
            if valid
            else " ".join(request.GET.getlist("has"))[:500],
            "filter_errors": [] if valid else _errors(filters.errors),
            "current_status": current_status,
            "filtered": bool(conditions or current_status or request.GET.get("label")),
            "filter_query": _query_without_page(request),
            "filter_params": _filter_params(request),
            "export_formats": Export.Format.choices,
        },
        status=200 if valid else 400,
    )


def _shown(jobs, user) -> list[Job]:
    """The jobs whose results a list may show: not those hidden from their owner."""
    return [job for job in jobs if job.allows(user, "download")]


def _facet_query(request: HttpRequest, conditions: list, label: str) -> str:
    """The query string with ``label`` added to the search, or taken out if it is in it."""
    kept = [c for c in conditions if c.label != label]
    if len(kept) == len(conditions):
        kept.append(search.Condition(label))
    query = request.GET.copy()
    for key in ("page", "has", "label"):
        query.pop(key, None)
    if kept:
        query["has"] = search.format_conditions(kept)
    return query.urlencode()


def _filter_params(request: HttpRequest) -> dict:
    """The job-list query of this page, as ``POST /api/exports/`` takes it in ``filters``."""
    out = {}
    for key in JobFilter.base_filters:
        values = [v for v in request.GET.getlist(key) if v]
        if values:
            out[key] = values if key == "has" else values[0]
    return out


def _errors(errors) -> list[str]:
    return [f"{field}: {' '.join(messages)}" for field, messages in errors.items()]


_CARD_FIELDS = (
    "id", "owner_id", "status", "thumbnail", "overlay_thumbnail", "original_filename",
    "created_at", "finished_at", "model", "width", "height", "score_threshold",
    "hidden", "hidden_reason", "hidden_at",
)  # fmt: skip


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


# --- Exports --------------------------------------------------------------------------------


@login_required
@require_POST
def export_create(request: HttpRequest) -> HttpResponse:
    """The history's export button without JavaScript (with it, the page calls the API)."""
    filters = {}
    for key in JobFilter.base_filters:
        values = [v for v in request.POST.getlist(key) if v]
        if values:
            filters[key] = values if key == "has" else values[0]
    try:
        services.export_create(
            owner=request.user, format=request.POST.get("format", ""), filters=filters
        )
    except services.ExportRefused as exc:
        messages.error(request, str(exc))
        return redirect(f"{reverse('job-list')}?{request.POST.get('query', '')[:2000]}")
    messages.success(request, "Export started; it is listed here.")
    return redirect("export-list")


@login_required
@require_GET
def export_list(request: HttpRequest) -> HttpResponse:
    exports = Export.objects.for_user(request.user)[:50]
    return render(request, "segmentation/export_list.html", {"exports": exports})


# --- One job --------------------------------------------------------------------------------


def _job(request: HttpRequest, pk, action: str = "view") -> Job:
    """The job if the user may do ``action`` to it: a 404 if they may not see it, a 403 saying
    why if they may see it but not do this (the owner of a hidden job asking for its files)."""
    try:
        return Job.objects.get_for(request.user, pk, action)
    except Job.DoesNotExist:
        raise Http404("No such job.") from None


@login_required
@require_GET
def job_detail(request: HttpRequest, pk) -> HttpResponse:
    job = _job(request, pk)
    return render(request, "segmentation/job_detail.html", _detail_context(job, request.user))


def _detail_context(job: Job, user) -> dict:
    can_download = job.allows(user, "download")
    found = results.job_results(job) if can_download else None
    can_change = job.allows(user, "change")
    return {
        "job": job,
        "results": found,
        "can_download": can_download,
        "can_change": can_change,
        "can_delete": job.allows(user, "delete"),
        "viewer": results.viewer_data(job, found, can_change=can_change) if found else None,
        "version": files.version(job),
    }


@never_cache
@login_required
@require_GET
def job_status(request: HttpRequest, pk) -> JsonResponse:
    """Polled by the job page while the job is queued or running."""
    job = _job(request, pk)
    context = _detail_context(job, request.user)
    body = render_to_string("segmentation/_job_body.html", context, request=request)
    return JsonResponse({"status": job.status, "finished": job.is_finished, "html": body})


@login_required
@require_POST
def job_delete(request: HttpRequest, pk) -> HttpResponse:
    job = _job(request, pk, "delete")
    services.job_delete(job=job)
    messages.success(request, f"Deleted {job.original_filename}.")
    return redirect("job-list")


@login_required
@require_POST
def job_retry(request: HttpRequest, pk) -> HttpResponse:
    """The failed-job page's Retry button (the API's ``POST /api/jobs/{id}/retry/``, as a form)."""
    job = _job(request, pk, "change")
    wait = job_rate_take(user=request.user, count=1)
    if wait is not None:
        messages.error(request, f"Too many jobs for now; retry in {wait:.0f} seconds.")
        return redirect("job-detail", pk=job.pk)
    try:
        services.job_retry(job=job)
    except (services.IllegalTransition, services.ModelNotRunning, QuotaExceeded) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Queued again.")
    return redirect("job-detail", pk=job.pk)


@login_required
@require_GET
def job_file(request: HttpRequest, pk, kind: str) -> HttpResponse:
    job = _job(request, pk, "download")
    try:
        return files.serve(job, kind, attachment=request.GET.get("download") == "1")
    except services.StorageUnavailable as exc:
        return HttpResponse(str(exc), status=503, content_type="text/plain")
    except DecodeBusy as exc:
        response = HttpResponse(str(exc), status=503, content_type="text/plain")
        response["Retry-After"] = str(ceil(exc.wait))
        return response


@login_required
@require_GET
def job_coco(request: HttpRequest, pk) -> HttpResponse:
    job = _job(request, pk, "download")
    if job.status != Job.Status.SUCCEEDED:
        raise Http404("Detections are available once the job has succeeded.")
    stem = job.original_filename.rsplit(".", 1)[0] or "photo"
    body = json.dumps(job_to_coco(job), indent=1).encode()
    return files.serve_bytes(body, f"{stem}-coco.json", "application/json", attachment=True)


# --- Collections ----------------------------------------------------------------------------

COLLECTION_PAGE_SIZE = 48


def _collection(request: HttpRequest, pk, action: str = "view") -> Collection:
    try:
        return Collection.objects.with_progress().get_for(request.user, pk, action)
    except Collection.DoesNotExist:
        raise Http404("No such collection.") from None


@login_required
@require_GET
def collection_list(request: HttpRequest) -> HttpResponse:
    mine = Collection.objects.for_user(request.user).filter(owner=request.user).with_progress()
    page = Paginator(mine, settings.SEGWEB["HISTORY_PAGE_SIZE"]).get_page(request.GET.get("page"))
    return render(request, "segmentation/collection_list.html", {"page": page})


@login_required
@require_GET
def collection_detail(request: HttpRequest, pk) -> HttpResponse:
    collection = _collection(request, pk)
    jobs = Job.objects.for_user(request.user).filter(collection=collection)
    page = Paginator(jobs.only(*_CARD_FIELDS), COLLECTION_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    chips = results.chips_for(_shown(page.object_list, request.user))  # above the threshold
    labels_by_job = {job_id: [c[0] for c in job_chips] for job_id, job_chips in chips.items()}
    return render(
        request,
        "segmentation/collection_detail.html",
        {
            "collection": collection,
            "progress": collection.progress,
            "page": page,
            "cards": [(job, labels_by_job.get(job.pk, [])) for job in page.object_list],
        },
    )


@login_required
@require_POST
def collection_cancel(request: HttpRequest, pk) -> HttpResponse:
    count = services.collection_cancel(collection=_collection(request, pk, "change"))
    messages.success(request, f"{count} queued photo(s) cancelled.")
    return redirect("collection-detail", pk=pk)


@login_required
@require_POST
def collection_retry(request: HttpRequest, pk) -> HttpResponse:
    collection = _collection(request, pk, "change")
    wait = job_rate_take(user=request.user, count=max(1, collection.progress["failed"]))
    if wait is not None:
        messages.error(request, f"Too many jobs for now; retry in {wait:.0f} seconds.")
        return redirect("collection-detail", pk=pk)
    try:
        count = services.collection_retry(collection=collection)
    except (services.ModelNotRunning, QuotaExceeded) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{count} failed photo(s) queued again.")
    return redirect("collection-detail", pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def collection_delete(request: HttpRequest, pk) -> HttpResponse:
    collection = _collection(request, pk, "delete")
    if request.method == "GET":
        return render(
            request,
            "segmentation/collection_confirm_delete.html",
            {"collection": collection, "progress": collection.progress},
        )
    services.collection_delete(collection=collection)
    messages.success(request, f"Deleted {collection.name} and its photos.")
    return redirect("collection-list")


# --- Account: webhooks ----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    form = WebhookForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                created = services.webhook_create(owner=request.user, **form.cleaned_data)
            except services.InvalidWebhook as exc:
                form.add_error("url", str(exc))
        if created is None:
            status = 400
        else:
            form = WebhookForm()
    webhooks = Webhook.objects.filter(owner=request.user).prefetch_related(
        Prefetch("deliveries", queryset=_recent_deliveries(), to_attr="recent")
    )
    # The secret is shown once, in the answer to the POST that created it (not in a redirect:
    # it would travel through the session's message store).
    context = {
        "form": form,
        "webhooks": webhooks,
        "created": created,
        "tokens": get_token_model().objects.filter(user=request.user).order_by("-created"),
    }
    return render(request, "segmentation/account.html", context, status=status)


def _recent_deliveries():
    from .models import WebhookDelivery

    # The last 10 of each webhook (Django slices prefetches per webhook with a window query).
    return WebhookDelivery.objects.prefetch_related("attempt_log").order_by("-created_at")[:10]


@login_required
@require_POST
def webhook_delete(request: HttpRequest, pk) -> HttpResponse:
    webhook = get_object_or_404(Webhook.objects.filter(owner=request.user), pk=pk)
    services.webhook_delete(webhook=webhook)
    messages.success(request, f"Webhook to {webhook.url} deleted.")
    return redirect("account")


@login_required
@require_POST
def token_revoke(request: HttpRequest, digest: str) -> HttpResponse:
    """Sign one API client out (the account page's "Revoke")."""
    tokens = get_token_model().objects.filter(user=request.user)
    services.token_revoke(token=get_object_or_404(tokens, digest=digest))
    messages.success(request, "Token revoked: the client using it is signed out.")
    return redirect("account")


@login_required
@require_POST
def tokens_revoke(request: HttpRequest) -> HttpResponse:
    """Sign every API client out (the account page's "Revoke all")."""
    revoked = services.user_tokens_revoke(user=request.user)
    messages.success(request, f"{revoked} token{'s' if revoked != 1 else ''} revoked.")
    return redirect("account")


# --- Accounts -------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is disabled on this server.")
    if request.user.is_authenticated:
        return redirect("job-list")
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        # Counted per client address before the form is even read: every attempt counts.
        wait = rate_wait(request, "signup")
        if wait is not None:
            return _signup_refused(request, wait)
        if form.is_valid():
            user = form.save()
            login(request, user, backend="segmentation.accounts.CasefoldUsernameBackend")
            return redirect("upload")
    return render(request, "registration/signup.html", {"form": form})


def _signup_refused(request: HttpRequest, wait: float) -> HttpResponse:
    minutes = ceil(wait / 60)
    context = {
        "form": SignupForm(),
        "refused": f"Too many sign-ups from your address; try again in {minutes} minutes.",
    }
    response = render(request, "registration/signup.html", context, status=429)
    response["Retry-After"] = str(ceil(wait))
    return response


# --- Health ---------------------------------------------------------------------------------


def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: the process answers."""
    return HttpResponse("ok\n", content_type="text/plain")


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready: database, storage, broker and a model that runs; 503 naming what is not."""
    checks = health.readiness()
    failing = [name for name, error in checks.items() if error]
    return JsonResponse(
        {"ready": not failing, "checks": {k: v or "ok" for k, v in checks.items()}},
        status=503 if failing else 200,
    )


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for ``Authorization: Bearer $SEGWEB_METRICS_TOKEN``; 404 when the
    setting is empty (the route does not exist then)."""
    token = settings.SEGWEB["METRICS_TOKEN"]
    if not token:
        raise Http404("Metrics are off: set SEGWEB_METRICS_TOKEN.")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("A valid bearer token is required.\n", status=401,
                                content_type="text/plain")  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


# --- Errors ---------------------------------------------------------------------------------


def _wants_json(request: HttpRequest) -> bool:
    """API paths, and pages asked for JSON (the upload page's script), get JSON errors."""
    return request.path.startswith("/api/") or "application/json" in request.headers.get(
        "Accept", ""
    )


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    """400 for what Django refuses before a view runs (too many files or fields, oversized
    form fields): JSON with a ``detail`` for the API, a page saying what to do otherwise."""
    message = _bad_request_message(exception)
    if _wants_json(request):
        return JsonResponse({"detail": message}, status=400)
    return render(request, "400.html", {"message": message}, status=400)


def _bad_request_message(exception) -> str:
    if isinstance(exception, TooManyFilesSent):
        most = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return f"At most {most} files in one request; send a ZIP for more."
    if isinstance(exception, TooManyFieldsSent):
        return f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} form fields in one request."
    if isinstance(exception, RequestDataTooBig):
        limit = describe_bytes(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return f"The request's form fields are larger than {limit}."
    return "The request could not be understood."


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    """404 page; API paths get the API's JSON shape."""
    if _wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return render(request, "404.html", status=404)


def forbidden(request: HttpRequest, exception=None) -> HttpResponse:
    """403 outside DRF (the admin, a page's permission check, saying why when it can); API
    paths get JSON."""
    return _forbidden(request, str(exception or "") or "You do not have permission to do this.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form post without a valid CSRF token (Django's own page has an inline style the CSP
    blocks). ``reason`` is Django's, for developers: the log has it."""
    return _forbidden(
        request, "The form expired or came from another site: reload the page and try again."
    )


def _forbidden(request: HttpRequest, message: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": message}, status=403)
    return render(request, "403.html", {"message": message}, status=403)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(
            {"detail": "Internal error; the administrators can see the log."}, status=500
        )
    # Without the request's context processors: they may be what failed.
    return HttpResponse(render_to_string("500.html"), status=500)
