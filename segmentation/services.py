"""Every write and state change of segweb: views, API, admin and tasks only call these.

Jobs move QUEUED -> RUNNING -> SUCCEEDED | FAILED. Each transition is a conditional UPDATE on
the current status, so two workers (or a worker and a moderator) can never both act on a job.
Slow work (storage, the model) stays outside database transactions.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Least
from django.urls import reverse
from django.utils import timezone
from knox.models import get_token_model

from . import archives, health, outbound
from .classes import class_rows, shown_classes
from .inference import InferenceError, ModelUnavailableError
from .inference.registry import AUTO
from .inference.runtime import requested_precision
from .models import (
    MAX_ATTEMPTS,
    Collection,
    Detection,
    Export,
    Job,
    JobClass,
    ModelReport,
    RefusedUploadCount,
    UserClass,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from .quotas import quota_check
from .uploads import (
    THUMBNAIL_SIZE,
    RequestRefused,
    UploadError,
    validate_threshold,
    validate_upload,
)

logger = logging.getLogger(__name__)

# Settings (SEGWEB_HEARTBEAT_SECONDS...), so that tests of real processes can shorten them.
HEARTBEAT_SECONDS = settings.SEGWEB["HEARTBEAT_SECONDS"]
# A running job whose heartbeat is older has lost its worker.
STALE_AFTER = timedelta(seconds=settings.SEGWEB["STALE_AFTER_SECONDS"])
# A queued job not picked up by then is published again.
REQUEUE_AFTER = timedelta(seconds=settings.SEGWEB["REQUEUE_AFTER_SECONDS"])


class StorageUnavailable(Exception):
    """The file store (disk or S3) could not be reached; answer 503 and keep nothing."""


class IllegalTransition(Exception):
    """The job is not in a state that allows this action."""


class ThresholdError(ValueError):
    """A threshold outside what the job kept; the message names the allowed range (a 400)."""


class ModelNotRunning(Exception):
    """The job's model cannot run on this server now (a worker reported why): answer 503."""


# --- Creating jobs --------------------------------------------------------------------------


def job_create(
    *,
    owner: AbstractBaseUser,
    upload: UploadedFile | None,
    score_threshold: object = None,
    model: str | None = None,
    collection: Collection | None = None,
    precision: str | None = None,
) -> Job:
    """Validate an upload, store it and its thumbnail, create the job, queue it on commit.

    Raises ``UploadError`` (bad input: 4xx; ``QuotaExceeded`` over a quota, checked before the
    photo is decoded; 503 when no decoding slot frees) or ``StorageUnavailable`` (503). Either
    way nothing is left behind: no row, no file.
    """
    try:
        threshold = validate_threshold(score_threshold)
        model_name = model_for_new_job(model)
        job_precision = precision_for_new_job(precision)
        if upload is not None:
            quota_check(owner=owner, add_bytes=upload.size or 0, add_jobs=1)
        image = validate_upload(upload)
    except UploadError as exc:
        upload_refusal_count(reason=exc.reason)
        raise
    job_id = uuid.uuid4()
    folder = f"{owner.pk}/{job_id}"
    stored: list[str] = []
    try:
        stored.append(_save(f"uploads/{folder}.{image.extension}", upload))
        stored.append(_save(f"thumbnails/{folder}.jpg", ContentFile(image.thumbnail_jpeg)))
        with transaction.atomic():
            job = Job.objects.create(
                id=job_id,
                owner=owner,
                collection=collection,
                image=stored[0],
                thumbnail=stored[1],
                original_filename=_clean_filename(upload.name),
                image_format=image.format,
                image_bytes=image.size_bytes,
                width=image.width,
                height=image.height,
                model=model_name,
                precision=job_precision,
                score_threshold=threshold,
                kept_min_score=keep_floor(threshold),
            )
            job_enqueue(job=job)
    except BaseException:
        _delete_files(stored)
        raise
    return job


def keep_floor(threshold: float) -> float:
    """The lowest score a job with this threshold keeps: ``SEGWEB_KEEP_MIN_SCORE``, or lower."""
    return min(settings.SEGWEB["KEEP_MIN_SCORE"], threshold)


def model_for_new_job(model: str | None) -> str:
    """The concrete model a new job will use; refuse unknown or unusable models (400)."""
    try:
        return health.resolve_model(model or AUTO)
    except ModelUnavailableError as exc:
        raise UploadError(str(exc), reason="bad_option") from exc


def precision_for_new_job(precision: str | None) -> str:
    """The precision a new job asks for: the server's (``SEGWEB_PRECISION``), or the user's when
    ``SEGWEB_PRECISION_PER_JOB`` allows it (400 otherwise, or for an unknown one)."""
    try:
        default = requested_precision()
        if not precision:
            return default
        chosen = requested_precision(precision)
    except ModelUnavailableError as exc:
        raise UploadError(str(exc).replace(" (SEGWEB_PRECISION)", ""), reason="bad_option") from exc
    if chosen != default and not settings.SEGWEB["PRECISION_PER_JOB"]:
        raise UploadError(
            f"This server runs every job at {default}: choosing the precision is not enabled "
            "(SEGWEB_PRECISION_PER_JOB).",
            reason="bad_option",
        )
    return chosen


def _clean_filename(name: str | None) -> str:
    # Kept as data only (stored names are generated): drop any path and control characters.
    base = os.path.basename((name or "").replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable())[:255]
    return base or "photo"


def _save(name: str, content) -> str:
    try:
        return default_storage.save(name, content)
    except Exception as exc:
        logger.exception("storage: cannot save %s", name)
        raise StorageUnavailable("The file store is unavailable; try again shortly.") from exc


def _delete_files(names: Iterable[str]) -> None:
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except Exception:
            logger.exception("storage: cannot delete %s (left behind)", name)


# --- Queueing -------------------------------------------------------------------------------


def job_enqueue(*, job: Job) -> None:
    """Publish the job to the queue once the current transaction commits.

    If the broker is down the job stays QUEUED with ``enqueued_at`` unset and ``jobs_sweep``
    publishes it later: the upload is never lost.
    """
    job_id = job.pk
    transaction.on_commit(lambda: _publish(job_id))


def _publish(job_id: uuid.UUID) -> None:
    from .tasks import run_job

    try:
        run_job.apply_async(
            args=[str(job_id)],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        )
    except Exception:  # noqa: BLE001 - broker down: the sweep publishes it later
        logger.warning("queue: cannot publish job %s now; the sweep will retry", job_id)
        return
    Job.objects.filter(pk=job_id).update(enqueued_at=timezone.now())


# --- Running jobs (worker side) -------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_claim(*, job_id: uuid.UUID | str) -> Job | None:
    """Take a QUEUED job for this worker; None if someone else has it or it is gone."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        worker=worker_name(),
        error="",
    )
    if not claimed:
        return None
    return Job.objects.get(pk=job_id)


def job_run(*, job_id: uuid.UUID | str) -> None:
    """The worker's whole job: claim, segment, store the overlay and detections, or fail."""
    job = job_claim(job_id=job_id)
    if job is None:
        logger.info("job %s: not queued any more (taken, finished or deleted)", job_id)
        return
    started = time.perf_counter()
    saved: list[str] = []
    try:
        with _Heartbeat(job.pk):
            result = _segment(job)
            overlay = _save_overlay(job, result.pictures, saved)
            preview = job.preview.name
            if not preview:
                preview = _save(f"previews/{job.owner_id}/{job.pk}.jpg", result.pictures.preview)
                saved.append(preview)
        result_bytes = result.pictures.overlay_png.size + result.pictures.overlay_thumbnail.size
        if result.pictures.preview is not None and preview in saved:
            result_bytes += result.pictures.preview.size
        job_succeed(
            job=job,
            detections=result.detections,
            overlay=overlay.png,
            overlay_thumbnail=overlay.thumbnail,
            overlay_threshold=overlay.threshold,
            preview=preview,
            result_bytes=result_bytes,
            runtime=result.runtime,
            precision=result.precision,
            inference_ms=result.inference_ms,
            total_ms=round((time.perf_counter() - started) * 1000),
        )
    except IllegalTransition:
        _delete_files(saved)  # deleted or re-queued by a moderator meanwhile
        logger.info("job %s: changed while running; result discarded", job.pk)
    except ModelUnavailableError as exc:
        _delete_files(saved)
        logger.error("job %s: model %s cannot run: %s", job.pk, job.model, exc)
        model_report_record(model=job.model, error=exc)
        job_fail(job=job, message=model_unavailable_message(job.model))
    except (InferenceError, StorageUnavailable) as exc:
        _delete_files(saved)
        job_fail(job=job, message=str(exc))
    except SoftTimeLimitExceeded:
        _delete_files(saved)
        limit = settings.SEGWEB["JOB_TIME_LIMIT"]
        job_fail(job=job, message=f"Segmentation took longer than the {limit}-second limit.")
    except Exception:
        _delete_files(saved)
        logger.exception("job %s: unexpected error", job.pk)
        job_fail(job=job, message="Segmentation failed because of an internal error.")
        raise


@dataclass
class _Pictures:
    threshold: float  # the overlay shows the detections scoring at least this
    overlay_png: ContentFile
    overlay_thumbnail: ContentFile
    preview: ContentFile | None


@dataclass
class _Result:
    detections: list
    pictures: _Pictures
    runtime: str
    inference_ms: int
    precision: str = "fp32"


PREVIEW_SIZE = (1600, 1600)  # the viewer's photo: sharp on screens, a few hundred KB


def _segment(job: Job) -> _Result:
    from .inference import load_segmenter

    image = _load_photo(job)
    # build_export: a missing OpenVINO export is built in the background meanwhile (torch runs
    # this job); the first job after it is installed runs on it.
    segmenter = load_segmenter(job.model, precision=job.precision, build_export=True)
    model_report_record(model=job.model, runtime=segmenter.runtime, only_if_changed=True)
    started = time.perf_counter()
    # Everything down to the keep floor is stored, so the threshold can be lowered later
    # without running the model again; only what scores above the threshold is shown.
    detections = segmenter.predict(image, score_threshold=job.kept_min_score)
    inference_ms = round((time.perf_counter() - started) * 1000)
    pictures = _draw(image, detections, job.score_threshold)
    return _Result(
        detections, pictures, segmenter.runtime, inference_ms, precision=segmenter.precision
    )


def _load_photo(job: Job):
    from .inference import load_image

    try:
        with default_storage.open(job.image.name, "rb") as f:
            data = f.read()
    except Exception as exc:
        logger.exception("job %s: cannot read %s", job.pk, job.image.name)
        raise StorageUnavailable("The uploaded photo could not be read from storage.") from exc
    return load_image(data, max_pixels=settings.SEGWEB["MAX_PIXELS"])


def _draw(image, detections: list, threshold: float, *, preview: bool = True) -> _Pictures:
    """The overlay (PNG), its thumbnail and (unless not wanted) the viewer's preview."""
    from .inference import render_overlay

    shown = [d for d in detections if d.score >= threshold]
    overlay = render_overlay(image, shown)
    return _Pictures(
        threshold=threshold,
        overlay_png=ContentFile(_png(overlay)),
        overlay_thumbnail=ContentFile(_jpeg(overlay, THUMBNAIL_SIZE, quality=82)),
        preview=ContentFile(_jpeg(image, PREVIEW_SIZE, quality=82)) if preview else None,
    )


def _png(image) -> bytes:
    import cv2
    import numpy as np

    # Huffman-only deflate: on a 12 MP photo it encoded about 2x faster than Pillow's fastest
    # level and, photos being noisy, the file was no larger (docs/benchmarks.md, Viewer). It
    # matters since a threshold change has the web process draw the overlay again.
    bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY]
    ok, encoded = cv2.imencode(".png", bgr, [*params, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:
        raise InferenceError("The overlay could not be encoded as PNG.")
    return encoded.tobytes()


def _jpeg(image, size: tuple[int, int], *, quality: int) -> bytes:
    from PIL import Image

    # A cheap box-filter reduction first: LANCZOS over 12 MP would take most of a second.
    factor = max(1, min(image.width // size[0], image.height // size[1]) // 2)
    small = image.reduce(factor) if factor > 1 else image.copy()
    small.thumbnail(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
    return buffer.getvalue()


def _save_overlay(job: Job, pictures: _Pictures, saved: list[str]) -> _Overlay:
    # A new name each time: a browser that cached the old overlay never shows it for the new.
    stem = f"overlays/{job.owner_id}/{job.pk}-{uuid.uuid4().hex[:8]}"
    png = _save(f"{stem}.png", pictures.overlay_png)
    saved.append(png)
    thumbnail = _save(f"{stem}-small.jpg", pictures.overlay_thumbnail)
    saved.append(thumbnail)
    return _Overlay(png=png, thumbnail=thumbnail, threshold=pictures.threshold)


@dataclass
class _Overlay:
    png: str
    thumbnail: str
    threshold: float


class _Heartbeat:
    """Refreshes ``heartbeat_at`` from a side thread while the model runs.

    The sweep treats a RUNNING job with an old heartbeat as abandoned (worker killed, machine
    gone), so a job can never stay RUNNING forever.
    """

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="job-heartbeat")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:  # a blip must not end the heartbeats for good
                    logger.warning("job %s: heartbeat not recorded", self.job_id, exc_info=True)
        finally:
            connection.close()  # this thread's own connection


def job_succeed(
    *,
    job: Job,
    detections: list,
    overlay: str,
    overlay_thumbnail: str = "",
    overlay_threshold: float | None = None,
    preview: str = "",
    runtime: str,
    inference_ms: int,
    total_ms: int,
    precision: str = "fp32",
    result_bytes: int = 0,
) -> None:
    """Record a finished job and its detections atomically (RUNNING -> SUCCEEDED).

    ``detections`` are everything down to the job's ``kept_min_score``, best first; the
    overlay files show those scoring at least ``overlay_threshold`` (the job's threshold when
    not given).
    """
    rows = [
        Detection(
            job_id=job.pk,
            rank=rank,
            label=d.label,
            score=d.score,
            x1=d.box[0],
            y1=d.box[1],
            x2=d.box[2],
            y2=d.box[3],
            area=d.area,
            rle=d.rle(),
        )
        for rank, d in enumerate(detections)
    ]
    with transaction.atomic():
        updated = Job.objects.filter(
            pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts
        ).update(
            status=Job.Status.SUCCEEDED,
            finished_at=timezone.now(),
            overlay=overlay,
            overlay_thumbnail=overlay_thumbnail,
            overlay_threshold=(
                job.score_threshold if overlay_threshold is None else overlay_threshold
            ),
            preview=preview or F("preview"),
            result_bytes=F("result_bytes") + result_bytes,
            runtime=runtime,
            precision=precision,
            inference_ms=inference_ms,
            total_ms=total_ms,
            error="",
        )
        if not updated:
            raise IllegalTransition(f"job {job.pk} is no longer running here")
        Detection.objects.bulk_create(rows, batch_size=500)
        job_classes_sync(job_id=job.pk)
        _announce_finished([job.pk])


def job_fail(*, job: Job, message: str) -> bool:
    """RUNNING -> FAILED with a message for the owner (server paths cut out: an exception's
    text often names a file). False if the job had moved on."""
    error = health.public_reason(message)[:2000]
    updated = Job.objects.filter(
        pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts
    ).update(status=Job.Status.FAILED, finished_at=timezone.now(), error=error)
    if updated:
        logger.info("job %s failed: %s", job.pk, message)
        _announce_finished([job.pk])
    return bool(updated)


def model_unavailable_message(model: str) -> str:
    """What a job's owner reads when its model could not start: no exception text, no paths."""
    return (
        f"The {model} model could not be started on this server, so the photo was not "
        "segmented. Nothing is wrong with your photo: the server's installation needs fixing "
        "(administrators see the reason in the worker's log and on the model list). "
        "Retry the job once it is fixed."
    )


def model_report_record(
    *,
    model: str,
    runtime: str = "",
    error: Exception | None = None,
    only_if_changed: bool = False,
) -> None:
    """Record what this worker process found when it loaded ``model`` (see ``ModelReport``).

    ``only_if_changed`` skips the write when the model is already reported usable: the job path
    calls it for every job, and a row per job would be a write per job for nothing.
    """
    usable = error is None
    if only_if_changed and ModelReport.objects.filter(model=model, usable=usable).exists():
        return
    try:
        ModelReport.objects.update_or_create(
            model=model,
            defaults={
                "usable": usable,
                "runtime": runtime,
                "reason": health.public_reason(str(error)) if error else "",
                "worker": worker_name(),
                "reported_at": timezone.now(),
            },
        )
    except DatabaseError:  # a report is advice: never let it fail a job or a worker's start
        logger.warning("model report for %s not recorded", model, exc_info=True)


def warm_up_worker() -> None:
    """Load the default model now (in a new worker process) so the first job is not slower, and
    report whether it loads, so that the web process can tell users the truth; start building
    its OpenVINO export in the background if it has none."""
    from .inference import load_segmenter, resolve_model_name

    try:
        name = resolve_model_name(AUTO)
    except ModelUnavailableError as exc:
        logger.error("worker: no model can run here: %s", exc)
        return
    try:
        segmenter = load_segmenter(name, build_export=True)
    except InferenceError as exc:
        logger.error("worker: model %s cannot load: %s", name, exc)
        model_report_record(model=name, error=exc)
        return
    model_report_record(model=name, runtime=segmenter.runtime)


# --- Changing the threshold after the fact --------------------------------------------------


def job_set_threshold(*, job: Job, threshold: float) -> Job:
    """Show ``job``'s detections scoring at least ``threshold``, without running the model again.

    Allowed from the job's ``kept_min_score`` (what the worker kept) to 1, in any state: a
    queued job simply starts with it. Nothing else changes (``finished_at``, ``inference_ms``,
    ``attempts``...). The overlay files are re-drawn on their next download
    (``job_overlay_current``). Raises ``ThresholdError`` naming the allowed range.
    """
    is_number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    if not (is_number and job.kept_min_score <= threshold <= 1):
        raise ThresholdError(threshold_range_message(job))
    # Conditional on the floor: a rerun can change it meanwhile (the check constraint would
    # refuse the row; this refuses it with the message).
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, kept_min_score__lte=threshold).update(
            score_threshold=threshold
        )
        if not updated:
            raise ThresholdError("The job changed meanwhile; reload it and try again.")
        job_classes_sync(job_id=job.pk)
    job.refresh_from_db()
    return job


def threshold_range_message(job: Job) -> str:
    low = job.kept_min_score
    return (
        f"score_threshold must be a number from {low:g} to 1 for this job "
        f"(detections scoring below {low:g} were not kept)."
    )


def job_overlay_current(*, job: Job) -> Job:
    """Make sure ``job``'s overlay files show its current threshold, re-drawing them if not.

    The first download after a threshold change pays for one drawing (about a second for a
    12 MP photo, from the stored masks: the model does not run); later downloads get the stored
    files. Two requests racing both draw, one wins; the loser's files are removed. Raises
    ``StorageUnavailable`` (503) when the photo cannot be read or the files not saved.
    """
    threshold = job.score_threshold
    if job.status != Job.Status.SUCCEEDED or job.overlay_threshold == threshold:
        return job
    from .decoding import decode_slot
    from .inference import InvalidImageError
    from .masks import to_found_all

    shown = to_found_all(job.detections.filter(score__gte=threshold).order_by("rank"))
    try:
        # The web process draws this: one of its decoding slots (``DecodeBusy`` goes to the
        # caller, a 503 with Retry-After).
        with decode_slot():
            pictures = _draw(_load_photo(job), shown, threshold, preview=False)
    except InvalidImageError as exc:  # the stored photo decoded once; it should again
        raise StorageUnavailable("The stored photo could not be read.") from exc
    saved: list[str] = []
    try:
        overlay = _save_overlay(job, pictures, saved)
    except StorageUnavailable:
        _delete_files(saved)
        raise
    old = [job.overlay.name, job.overlay_thumbnail.name]
    with transaction.atomic():
        updated = Job.objects.filter(
            pk=job.pk,
            status=Job.Status.SUCCEEDED,
            score_threshold=threshold,
            overlay=job.overlay.name,
        ).update(
            overlay=overlay.png,
            overlay_thumbnail=overlay.thumbnail,
            overlay_threshold=threshold,
        )
        transaction.on_commit(lambda: _delete_files(old if updated else saved))
    job.refresh_from_db()
    return job


# --- Moderation and owners' actions ---------------------------------------------------------


def job_rerun(*, job: Job) -> Job:
    """Run a finished job again (SUCCEEDED | FAILED -> QUEUED), dropping its old results.

    The keep floor is taken afresh from the settings and the job's threshold.
    """
    old_files = [job.overlay.name, job.overlay_thumbnail.name]
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).update(
            status=Job.Status.QUEUED,
            started_at=None,
            finished_at=None,
            heartbeat_at=None,
            enqueued_at=None,
            attempts=0,
            attempt_limit=MAX_ATTEMPTS,
            error="",
            overlay="",
            overlay_thumbnail="",
            overlay_threshold=None,
            result_bytes=0,  # the preview stays, uncounted: under 1 MB
            kept_min_score=Least(F("score_threshold"), settings.SEGWEB["KEEP_MIN_SCORE"]),
            runtime="",
            inference_ms=None,
            total_ms=None,
        )
        if not updated:
            raise IllegalTransition("Only finished jobs can be run again.")
        Detection.objects.filter(job_id=job.pk).delete()
        job_classes_sync(job_id=job.pk)
        job_enqueue(job=job)
        transaction.on_commit(lambda: _delete_files(old_files))
    job.refresh_from_db()
    return job


def job_retry(*, job: Job) -> Job:
    """Queue a failed job again for its owner (FAILED -> QUEUED).

    Unlike ``job_rerun`` it keeps the job's history: ``attempts`` keeps counting, and the job
    gets ``MAX_ATTEMPTS`` more runs before a dying worker fails it for good.

    Raises:
        IllegalTransition: the job has not failed (409).
        ModelNotRunning: a worker reported that the job's model cannot run now (503); queueing
            it would only fail it again.
    """
    broken = health.broken_models().get(job.model)
    if broken is not None:
        raise ModelNotRunning(
            f"The {job.model} model cannot run on this server right now ({broken}); "
            "retry once an administrator has fixed it."
        )
    quota_check(owner=job.owner, add_bytes=0, add_jobs=1)
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status=Job.Status.FAILED).update(
            status=Job.Status.QUEUED,
            started_at=None,
            finished_at=None,
            heartbeat_at=None,
            enqueued_at=None,
            attempt_limit=F("attempts") + MAX_ATTEMPTS,
            error="",
        )
        if not updated:
            current = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
            raise IllegalTransition(
                f"Only a failed job can be retried; this one is {current or 'gone'}."
            )
        job_enqueue(job=job)
    job.refresh_from_db()
    return job


def job_hide(*, job: Job, by: AbstractBaseUser, reason: str) -> None:
    """Hide a job from its owner (moderation); the reason is kept for the record."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("A reason is required to hide a job.")
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(
            hidden=True, hidden_reason=reason, hidden_at=timezone.now(), hidden_by=by
        )
        job_classes_sync(job_id=job.pk)
        _exports_withdraw(job=job)


def _exports_withdraw(*, job: Job) -> None:
    """The finished exports that hold a job now hidden stop being served: their files go (a
    signed S3 URL handed out earlier finds nothing) and they say why. Exports still running
    leave hidden jobs out by themselves."""
    exports = Export.objects.filter(jobs=job, status=Export.Status.SUCCEEDED)
    names = [name for name in exports.values_list("file", flat=True) if name]
    exports.update(
        status=Export.Status.FAILED,
        file="",
        error="Withdrawn: a moderator hid one of its photos. Export the others again.",
    )
    transaction.on_commit(lambda: _delete_files(names))


def job_unhide(*, job: Job) -> None:
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(
            hidden=False, hidden_reason="", hidden_at=None, hidden_by=None
        )
        job_classes_sync(job_id=job.pk)


#: Every file a job stores; deleting a job, alone or with its collection, deletes them all.
JOB_FILE_FIELDS = ("image", "thumbnail", "overlay", "overlay_thumbnail", "preview")


def job_delete(*, job: Job) -> None:
    """Delete a job, its detections and, once that is committed, its files."""
    names = [getattr(job, field).name for field in JOB_FILE_FIELDS]
    with transaction.atomic():
        job_classes_sync(job_id=job.pk, deleting=True)
        Job.objects.filter(pk=job.pk).delete()
        transaction.on_commit(lambda: _delete_files(names))


def user_deactivate(*, user: AbstractBaseUser) -> None:
    """Stop a user from signing in or using the API; their jobs are kept for moderation."""
    with transaction.atomic():
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        user_tokens_revoke(user=user)


def user_token_create(*, user: AbstractBaseUser):
    """A new API token for one client of this user: ``(token, key)``. Only the key's digest
    is stored, so the key is seen once, now. It expires after ``SEGWEB_TOKEN_TTL_DAYS``, if
    set (``token.expiry``; None: never)."""
    return get_token_model().objects.create(user=user)


def token_revoke(*, token) -> None:
    """Revoke one API token (the client that sent it signs out); the user's others still work."""
    get_token_model().objects.filter(pk=token.pk).delete()


def user_tokens_revoke(*, user: AbstractBaseUser) -> int:
    """Revoke every API token of a user (a password change, a deactivation, "sign out
    everywhere"); returns how many there were."""
    deleted, _ = get_token_model().objects.filter(user_id=user.pk).delete()
    return deleted


# --- What a job shows, for searching histories ----------------------------------------------


def job_classes_sync(*, job_id: uuid.UUID, deleting: bool = False) -> None:
    """Make a job's ``JobClass`` rows and its owner's ``UserClass`` counts match what the job
    shows now (its detections at its current threshold, if it succeeded and is not hidden).

    Every change of what a job shows calls it, inside the transaction that makes the change:
    finishing, a threshold change, a re-run, hiding and showing again, and (with
    ``deleting``, before the rows go) deletion. It recomputes from the detections rather than
    applying a difference, so a call is always safe. The job row is locked first (PostgreSQL;
    SQLite writers are serialised anyway), so that two changes of one job cannot interleave
    their reads and writes of the summary.
    """
    job = (
        Job.objects.select_for_update()
        .filter(pk=job_id)
        .only("id", "owner_id", "status", "hidden", "score_threshold", "created_at")
        .first()
    )
    before = list(JobClass.objects.filter(job_id=job_id))
    after = []
    if job is not None and not deleting and job.status == Job.Status.SUCCEEDED:
        scored = Detection.objects.filter(job_id=job_id).values_list("label", "score")
        after = class_rows(JobClass, job, shown_classes(scored, job.score_threshold))
    counted_before = {c.label for c in before if c.visible}
    counted_after = {c.label for c in after if c.visible}
    if before:
        JobClass.objects.filter(job_id=job_id).delete()
    if after:
        JobClass.objects.bulk_create(after)
    owner_id = job.owner_id if job is not None else (before[0].owner_id if before else None)
    for label in counted_after - counted_before:
        _user_class_add(owner_id=owner_id, label=label, jobs=1)
    for label in counted_before - counted_after:
        _user_class_add(owner_id=owner_id, label=label, jobs=-1)


def _user_class_add(*, owner_id: int, label: str, jobs: int) -> None:
    if UserClass.objects.filter(owner_id=owner_id, label=label).update(jobs=F("jobs") + jobs):
        return
    try:
        with transaction.atomic():  # a savepoint: a concurrent first insert must not abort ours
            UserClass.objects.create(owner_id=owner_id, label=label, jobs=jobs)
    except IntegrityError:
        UserClass.objects.filter(owner_id=owner_id, label=label).update(jobs=F("jobs") + jobs)


def class_counts_rebuild() -> None:
    """Recompute every job's class rows and every user's summary (``manage.py
    rebuild_class_counts``); for repairs, while no worker runs."""
    from .classes import rebuild_all

    with transaction.atomic():
        rebuild_all(Job, Detection, JobClass, UserClass)


# --- Exports ---------------------------------------------------------------------------------


class ExportRefused(Exception):
    """An export that cannot be made: the message says why, ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def export_create(
    *,
    owner: AbstractBaseUser,
    format: str,
    job_ids: list[uuid.UUID] | None = None,
    filters: dict | None = None,
) -> Export:
    """Select jobs of ``owner`` (by id, or by the job list's filters) and queue their export.

    Only the owner's succeeded jobs that they can see are exported. Raises ``ExportRefused``:
    400 for a bad selection (ids not found, another user's ids look the same; unfinished jobs;
    nothing or too much selected), 429 when the owner already has the most exports running.
    """
    limits = settings.SEGWEB
    if format not in Export.Format.values:
        raise ExportRefused(f"Unknown format; one of: {', '.join(Export.Format.values)}.")
    mine = Job.objects.for_user(owner, "download").filter(owner=owner)  # hidden ones left out
    if job_ids is not None:
        selected = _selected_jobs(mine, job_ids)
        selection = {"jobs": len(selected)}
    else:
        selected = list(_filtered_jobs(mine, owner, filters or {}))
        selection = {"filters": filters or {}}
    if not selected:
        raise ExportRefused("No finished job matches: there is nothing to export.")
    if len(selected) > limits["EXPORT_MAX_JOBS"]:
        raise ExportRefused(
            f"{len(selected)} jobs are selected; an export takes at most "
            f"{limits['EXPORT_MAX_JOBS']}. Narrow the selection (dates, classes) and export "
            "in parts."
        )
    with transaction.atomic():
        # Serialise one owner's requests, so that two at once cannot both pass the limit.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        active = Export.objects.filter(
            owner=owner, status__in=[Export.Status.QUEUED, Export.Status.RUNNING]
        ).count()
        if active >= limits["EXPORT_MAX_ACTIVE"]:
            raise ExportRefused(
                f"You already have {active} exports in progress; wait for one to finish.", 429
            )
        export = Export.objects.create(
            owner=owner,
            format=format,
            selection=selection,
            total=len(selected),
            expires_at=timezone.now() + timedelta(days=limits["EXPORT_DAYS"]),
        )
        Export.jobs.through.objects.bulk_create(
            [Export.jobs.through(export_id=export.pk, job_id=pk) for pk in selected],
            batch_size=500,
        )
        export_id = export.pk
        transaction.on_commit(lambda: _publish_export(export_id))
    return export


def _selected_jobs(mine, job_ids: list) -> list:
    wanted = list(dict.fromkeys(job_ids))
    if len(wanted) > settings.SEGWEB["EXPORT_MAX_JOBS"]:
        raise ExportRefused(
            f"An export takes at most {settings.SEGWEB['EXPORT_MAX_JOBS']} jobs; "
            f"{len(wanted)} were given."
        )
    found = dict(mine.filter(pk__in=wanted).values_list("pk", "status"))
    missing = [str(pk) for pk in wanted if pk not in found]
    if missing:
        raise ExportRefused(f"No such job: {', '.join(missing[:5])}{_more(missing)}.")
    unfinished = [str(pk) for pk in wanted if found[pk] != Job.Status.SUCCEEDED]
    if unfinished:
        raise ExportRefused(
            f"Only succeeded jobs can be exported: {', '.join(unfinished[:5])}"
            f"{_more(unfinished)} did not succeed."
        )
    return wanted


def _more(items: list) -> str:
    return f" and {len(items) - 5} more" if len(items) > 5 else ""


def _filtered_jobs(mine, owner, filters: dict):
    from django.http import QueryDict

    from .api.filters import JobFilter

    query = QueryDict(mutable=True)
    for key, value in filters.items():
        query.setlist(key, value if isinstance(value, list) else [value])
    found = JobFilter(query, queryset=mine, owner=owner)
    if not found.is_valid():
        messages = " ".join(f"{k}: {' '.join(v)}" for k, v in found.errors.items())
        raise ExportRefused(f"filters: {messages}")
    limit = settings.SEGWEB["EXPORT_MAX_JOBS"] + 1  # one more tells that there are too many
    return (
        found.qs.filter(status=Job.Status.SUCCEEDED)
        .order_by("-created_at")
        .values_list("pk", flat=True)[:limit]
    )


def _publish_export(export_id: uuid.UUID) -> None:
    from .tasks import run_export

    try:
        run_export.apply_async(args=[str(export_id)], retry=True, retry_policy={"max_retries": 2})
    except Exception:  # noqa: BLE001 - broker down: the sweep publishes it later
        logger.warning("queue: cannot publish export %s now; the sweep will retry", export_id)
        return
    Export.objects.filter(pk=export_id).update(enqueued_at=timezone.now())


def export_run(*, export_id: uuid.UUID | str) -> None:
    """The worker's side: claim the export, write its ZIP to storage job by job, finish it.

    The ZIP streams into storage as it is written (an S3 multipart upload, or the file
    itself): memory does not grow with the number of jobs. Progress (``done``) is saved after
    each job and doubles as the export's heartbeat.
    """
    from . import datasets

    now = timezone.now()
    claimed = Export.objects.filter(pk=export_id, status=Export.Status.QUEUED).update(
        status=Export.Status.RUNNING, started_at=now, heartbeat_at=now, done=0
    )
    if not claimed:
        logger.info("export %s: not queued any more", export_id)
        return
    export = Export.objects.get(pk=export_id)
    name = f"exports/{export.owner_id}/{export.pk}.zip"
    jobs = (
        Job.objects.for_user(export.owner, "download")
        .filter(owner=export.owner_id, status=Job.Status.SUCCEEDED)
        .filter(pk__in=Export.jobs.through.objects.filter(export_id=export.pk).values("job_id"))
        .order_by("created_at")
    )

    def progress(done: int) -> None:
        Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
            done=done, heartbeat_at=timezone.now()
        )

    try:
        with _open_for_writing(name) as target:
            datasets.write_dataset(
                target,
                export.format,
                jobs.iterator(chunk_size=100),
                description=f"segweb export {export.pk}",
                progress=progress,
            )
        size = default_storage.size(name)
    except (datasets.PhotoUnavailable, StorageUnavailable, OSError) as exc:
        logger.exception("export %s: storage failed", export.pk)
        _export_fail(export, name, f"The file store failed while exporting: {exc}")
        return
    except SoftTimeLimitExceeded:
        limit = settings.SEGWEB["EXPORT_TIME_LIMIT"]
        _export_fail(export, name, f"The export took longer than the {limit}-second limit.")
        return
    except Exception:
        logger.exception("export %s: unexpected error", export.pk)
        _export_fail(export, name, "The export failed because of an internal error.")
        raise
    finished = Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
        status=Export.Status.SUCCEEDED,
        file=name,
        size_bytes=size,
        finished_at=timezone.now(),
        done=jobs.count(),
    )
    if not finished:  # deleted or expired meanwhile
        _delete_files([name])


def _open_for_writing(name: str):
    try:
        path = default_storage.path(name)
    except NotImplementedError:  # S3: a multipart upload, part by part as the ZIP grows
        try:
            return default_storage.open(name, "wb")
        except Exception as exc:
            raise StorageUnavailable("The file store is unavailable.") from exc
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    return open(path, "wb")


def _export_fail(export: Export, name: str, message: str) -> None:
    error = health.public_reason(message)[:2000]  # the owner reads it: no server paths
    Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
        status=Export.Status.FAILED, finished_at=timezone.now(), error=error
    )
    _delete_files([name])


def export_delete(*, export: Export) -> None:
    """Delete an export and, once that is committed, its file."""
    name = export.file.name
    with transaction.atomic():
        Export.objects.filter(pk=export.pk).delete()
        transaction.on_commit(lambda: _delete_files([name]))


def exports_sweep(*, now=None) -> dict:
    """Celery beat's housekeeping of exports: delete expired ones with their files, fail those
    whose worker died, publish queued ones the broker never got."""
    now = now or timezone.now()
    expired = list(Export.objects.filter(expires_at__lte=now))
    for export in expired:
        export_delete(export=export)
    stale = now - timedelta(seconds=settings.SEGWEB["EXPORT_STALE_AFTER_SECONDS"])
    for export in Export.objects.filter(status=Export.Status.RUNNING, heartbeat_at__lt=stale):
        _export_fail(
            export,
            f"exports/{export.owner_id}/{export.pk}.zip",
            "The worker building this export stopped; start the export again.",
        )
    unpublished = list(
        Export.objects.filter(
            status=Export.Status.QUEUED, created_at__lt=now - timedelta(seconds=5)
        )
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - REQUEUE_AFTER))
        .values_list("pk", flat=True)[:100]
    )
    for export_id in unpublished:
        _publish_export(export_id)
    return {"expired": len(expired), "published": len(unpublished)}


# --- Collections ----------------------------------------------------------------------------


class CollectionRefused(UploadError):
    """Not one file of a collection could be made into a job; ``rejected`` says why for each."""

    def __init__(self, message: str, rejected: list[dict]) -> None:
        super().__init__(message, 400, reason="collection_empty")
        self.rejected = rejected


def collection_create_from_photos(
    *,
    owner: AbstractBaseUser,
    uploads: list[UploadedFile],
    name: str = "",
    score_threshold: object = None,
    model: str | None = None,
) -> Collection:
    """Several photos sent together: one job each (through ``job_create``), as one collection.

    Files that are not acceptable photos are listed in ``rejected``; if none is acceptable the
    whole request is refused (``CollectionRefused``) and nothing is kept.
    """
    threshold, model_name = _collection_options(score_threshold, model)
    _collection_quota_check(owner, sum(u.size or 0 for u in uploads), len(uploads))
    members = (archives.Member(archives.display_name(u.name or "photo"), upload=u) for u in uploads)
    return _collection_fill(
        owner=owner,
        source=Collection.Source.UPLOAD,
        name=_collection_name(name) or f"{len(uploads)} photos",
        members=members,
        threshold=threshold,
        model_name=model_name,
    )


def collection_create_from_archive(
    *,
    owner: AbstractBaseUser,
    archive: UploadedFile | None,
    name: str = "",
    score_threshold: object = None,
    model: str | None = None,
) -> Collection:
    """The photos of one ZIP archive as one collection; see ``archives`` for what is refused.

    A refused archive (``UploadError``: not a ZIP, too large, too many files, a zip bomb) or a
    storage outage half-way (``StorageUnavailable``) leaves nothing behind.
    """
    threshold, model_name = _collection_options(score_threshold, model)
    if archive is None:
        raise UploadError(
            "No archive was sent: attach a ZIP in the 'archive' field.", reason="missing"
        )
    try:
        zip_file = archives.open_archive(archive)
    except UploadError as exc:
        upload_refusal_count(reason=exc.reason)
        raise
    with zip_file:
        files = archives.photo_candidates(zip_file)
        _collection_quota_check(owner, sum(i.file_size for i in files), len(files))
        stem = archives.display_name(os.path.basename(archive.name or "")).rsplit(".", 1)[0]
        return _collection_fill(
            owner=owner,
            source=Collection.Source.ARCHIVE,
            name=_collection_name(name) or stem or "archive",
            members=archives.members(zip_file),
            threshold=threshold,
            model_name=model_name,
        )


def job_rate_draw_photos(
    *, user: AbstractBaseUser, photos: list[UploadedFile], archive: UploadedFile | None = None
) -> None:
    """Draw every photo of a request (each file, or each photo of a ZIP) from the user's job
    rate before anything is kept, for the API and the upload form alike: all of them fit, or
    ``RequestRefused`` (429) saying when to try again. A refused archive is counted and raised.
    """
    from .api.throttling import job_rate_take  # throttling -> accounts -> services

    count = len(photos) if archive is None else _archive_photo_count(archive)
    wait = job_rate_take(user=user, count=count)
    if wait is not None:
        rate = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["job_create"]
        raise RequestRefused(
            f"Too many jobs for now: {count} photo(s) do not fit in your job rate ({rate}); "
            f"nothing was kept. Try again in {wait:.0f} seconds.",
            429,
            wait=wait,
        )


def _archive_photo_count(archive: UploadedFile) -> int:
    try:
        with archives.open_archive(archive) as zip_file:
            return len(archives.photo_candidates(zip_file))
    except UploadError as exc:
        upload_refusal_count(reason=exc.reason)
        raise


def _collection_options(score_threshold: object, model: str | None) -> tuple[float, str]:
    # Refused before any file is looked at: a bad option is the same for every photo.
    try:
        return validate_threshold(score_threshold), model_for_new_job(model)
    except UploadError as exc:
        upload_refusal_count(reason=exc.reason)
        raise


def _collection_quota_check(owner: AbstractBaseUser, add_bytes: int, add_jobs: int) -> None:
    # All the photos at once, before any is decoded: over quota, nothing is kept.
    try:
        quota_check(owner=owner, add_bytes=add_bytes, add_jobs=add_jobs)
    except UploadError as exc:
        upload_refusal_count(reason=exc.reason)
        raise


def _collection_name(name: str | None) -> str:
    return "".join(ch for ch in (name or "") if ch.isprintable()).strip()[:200]


def _collection_fill(
    *,
    owner: AbstractBaseUser,
    source: str,
    name: str,
    members: Iterable[archives.Member],
    threshold: float,
    model_name: str,
) -> Collection:
    # Each photo is its own short transaction (job_create) and is queued at once: workers start
    # on the first photos while the last ones are still being checked, and no database lock is
    # held for the whole archive. ``sealed_at`` is set at the end, so that the collection cannot
    # be called finished while photos are still arriving.
    collection = Collection.objects.create(owner=owner, name=name, source=source)
    rejected: list[dict] = []
    accepted = 0
    try:
        for member in members:
            if member.rejected:
                upload_refusal_count(reason="archive_member")
                rejected.append({"name": member.name, "reason": member.rejected})
                continue
            try:
                job_create(
                    owner=owner,
                    upload=member.upload,
                    score_threshold=threshold,
                    model=model_name,
                    collection=collection,
                )
            except RequestRefused:
                raise  # over a quota, or the server is busy: the whole request, not this photo
            except UploadError as exc:
                rejected.append({"name": member.name, "reason": exc.message})
            else:
                accepted += 1
    except BaseException:
        collection_delete(collection=collection)
        raise
    if not accepted:
        collection_delete(collection=collection)
        reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in rejected[:3])
        more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
        message = (
            f"No photo could be accepted: {reasons}{more}." if rejected else "It has no files."
        )
        raise CollectionRefused(message, rejected)
    Collection.objects.filter(pk=collection.pk).update(rejected=rejected, sealed_at=timezone.now())
    collection_check_finished(collection_id=collection.pk)
    collection.refresh_from_db()
    return collection


def collection_check_finished(*, collection_id: uuid.UUID) -> bool:
    """Mark a sealed collection finished once none of its jobs is queued or running, exactly
    once (a conditional UPDATE: two jobs finishing together cannot both do it), and tell its
    owner's webhooks. True if this call finished it."""
    unfinished = Job.objects.filter(
        collection_id=OuterRef("pk"), status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
    )
    finished = (
        Collection.objects.filter(
            pk=collection_id, sealed_at__isnull=False, finished_at__isnull=True
        )
        .exclude(Exists(unfinished))
        .update(finished_at=timezone.now())
    )
    if finished:
        collection = Collection.objects.with_progress().get(pk=collection_id)
        _webhooks_announce(
            owner_id=collection.owner_id,
            event=Webhook.Event.COLLECTION_FINISHED,
            payload=_collection_payload(collection),
        )
    return bool(finished)


def collection_cancel(*, collection: Collection) -> int:
    """Fail the collection's queued jobs ("cancelled"); running ones finish. How many."""
    queued = Job.objects.filter(collection=collection, status=Job.Status.QUEUED, hidden=False)
    cancelled = queued.update(
        status=Job.Status.FAILED,
        finished_at=timezone.now(),
        error="Cancelled by its owner before it ran.",
    )
    collection_check_finished(collection_id=collection.pk)
    return cancelled


def collection_retry(*, collection: Collection) -> int:
    """Retry the collection's failed (and cancelled) jobs with ``job_retry``; how many. The
    collection finishes, and is announced, again.

    Raises ``ModelNotRunning`` (503) before retrying anything when a failed job's model cannot
    run on this server now.
    """
    # A job a moderator hid is not its owner's to run again (the admin's "Run again" is).
    failed = list(Job.objects.filter(collection=collection, status=Job.Status.FAILED, hidden=False))
    for model in {job.model for job in failed}:
        broken = health.broken_models().get(model)
        if broken is not None:
            raise ModelNotRunning(
                f"The {model} model cannot run on this server right now ({broken}); "
                "retry once an administrator has fixed it."
            )
    quota_check(owner=collection.owner, add_bytes=0, add_jobs=len(failed))
    if failed:
        Collection.objects.filter(pk=collection.pk).update(finished_at=None)
    retried = 0
    for job in failed:
        try:
            job_retry(job=job)
        except IllegalTransition:
            continue  # retried or deleted meanwhile
        retried += 1
    collection_check_finished(collection_id=collection.pk)
    return retried


def collection_delete(*, collection: Collection) -> None:
    """Delete a collection, its jobs and, once that is committed, their files."""
    rows = Job.objects.filter(collection=collection).values_list(*JOB_FILE_FIELDS)
    with transaction.atomic():
        names = [name for row in rows for name in row]
        for job_id in Job.objects.filter(collection=collection).values_list("pk", flat=True):
            job_classes_sync(job_id=job_id, deleting=True)  # their share of the summary goes
        Job.objects.filter(collection=collection).delete()
        Collection.objects.filter(pk=collection.pk).delete()
        transaction.on_commit(lambda: _delete_files(names))


# --- Webhooks -------------------------------------------------------------------------------

MAX_WEBHOOKS_PER_USER = 10
DELIVERY_MAX_ATTEMPTS = 5
# Retries 30 s, 2 min, 8 min and 32 min after a failed attempt (published by webhooks_sweep
# every 15 s: the first retry comes within a minute), then the delivery is marked failed.
DELIVERY_FIRST_RETRY = timedelta(seconds=30)
DELIVERY_BACKOFF_FACTOR = 4
# A claimed attempt not recorded by then (its worker died) is due again.
DELIVERY_LEASE = timedelta(seconds=90)
# Finished deliveries (and their attempts) are kept this long for the account page's log.
DELIVERY_KEPT = timedelta(days=30)


class InvalidWebhook(Exception):
    """A webhook we refuse to create (bad URL or events, too many): a 400 with this message."""


def webhook_create(*, owner: AbstractBaseUser, url: str, events: list[str]) -> Webhook:
    """Register a URL for the owner's events; its signing secret is generated here."""
    url = (url or "").strip()
    if not url or len(url) > 2000:
        raise InvalidWebhook("Give the URL to POST to (at most 2000 characters).")
    wanted = sorted(set(events or []))
    unknown = [e for e in wanted if e not in Webhook.Event.values]
    if not wanted or unknown:
        raise InvalidWebhook(
            f"events must be a non-empty list of {', '.join(Webhook.Event.values)}"
            + (f"; unknown: {', '.join(map(str, unknown))}." if unknown else ".")
        )
    try:
        outbound.check_url(url, allow_loopback=settings.SEGWEB["WEBHOOK_ALLOW_LOOPBACK"])
    except outbound.DestinationRefused as exc:
        raise InvalidWebhook(str(exc)) from exc
    with transaction.atomic():
        if Webhook.objects.filter(owner=owner).count() >= MAX_WEBHOOKS_PER_USER:
            raise InvalidWebhook(f"At most {MAX_WEBHOOKS_PER_USER} webhooks per user.")
        return Webhook.objects.create(owner=owner, url=url, events=wanted)


def webhook_delete(*, webhook: Webhook) -> None:
    """Delete a webhook with its deliveries; a delivery in flight is not recorded."""
    Webhook.objects.filter(pk=webhook.pk).delete()


def _announce_finished(job_ids: list) -> None:
    # The one hook of job completion: after the commit, and never able to fail the job.
    ids = list(job_ids)
    transaction.on_commit(lambda: jobs_finished_announce(job_ids=ids), robust=True)


def jobs_finished_announce(*, job_ids: Iterable[uuid.UUID]) -> None:
    """Tell webhooks that these jobs finished, and finish the collections they complete."""
    jobs = Job.objects.filter(pk__in=list(job_ids), status__in=Job.FINISHED)
    for job in jobs:
        _webhooks_announce(
            owner_id=job.owner_id, event=Webhook.Event.JOB_FINISHED, payload=_job_payload(job)
        )
        if job.collection_id:
            collection_check_finished(collection_id=job.collection_id)


def _webhooks_announce(*, owner_id: int, event: str, payload: dict) -> None:
    hooks = [h for h in Webhook.objects.filter(owner_id=owner_id) if event in h.events]
    if not hooks:
        return
    now = timezone.now()
    with transaction.atomic():
        deliveries = WebhookDelivery.objects.bulk_create(
            WebhookDelivery(webhook=h, event=event, payload=payload, next_attempt_at=now)
            for h in hooks
        )
        for delivery in deliveries:
            transaction.on_commit(lambda pk=delivery.pk: _publish_delivery(pk))


def _link(view_name: str, *args) -> str:
    return settings.SEGWEB["PUBLIC_URL"] + reverse(view_name, args=args)


def _job_payload(job: Job) -> dict:
    # What the owner may see: the instances above the job's threshold, none once a moderator
    # hid it (as the API's answer for it).
    shown = job.detections.none() if job.hidden else job.detections.above_threshold()
    labels = sorted(set(shown.values_list("label", flat=True)))
    return {
        "event": Webhook.Event.JOB_FINISHED,
        "job": {
            "id": str(job.pk),
            "status": job.status,
            "original_filename": job.original_filename,
            "collection": str(job.collection_id) if job.collection_id else None,
            "model": job.model,
            "labels": labels,
            "detections": shown.count(),
            "hidden": job.hidden,
            "error": job.error,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "url": _link("api-job-detail", job.pk),
            "page_url": _link("job-detail", job.pk),
        },
    }


def _collection_payload(collection: Collection) -> dict:
    progress = collection.progress
    if progress["failed"] == 0:
        status = "succeeded"
    elif progress["done"] == 0:
        status = "failed"
    else:
        status = "partial"
    return {
        "event": Webhook.Event.COLLECTION_FINISHED,
        "collection": {
            "id": str(collection.pk),
            "name": collection.name,
            "status": status,
            "progress": progress,
            "rejected": len(collection.rejected),
            "url": _link("api-collection-detail", collection.pk),
            "page_url": _link("collection-detail", collection.pk),
            "jobs_url": settings.SEGWEB["PUBLIC_URL"] + collection.jobs_path,
        },
    }


def _publish_delivery(delivery_id: uuid.UUID) -> None:
    from .tasks import deliver_webhook

    try:
        deliver_webhook.apply_async(
            args=[str(delivery_id)],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        )
    except Exception:  # noqa: BLE001 - broker down: webhooks_sweep publishes it later
        logger.warning("queue: cannot publish delivery %s now; the sweep will", delivery_id)


def webhook_delivery_attempt(*, delivery_id: uuid.UUID | str) -> WebhookAttempt | None:
    """Claim a due delivery, POST it once (signed), and record the attempt and what follows:
    delivered, due again after a backoff, or failed for good. None if it was not due here."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(attempts=F("attempts") + 1, next_attempt_at=now + DELIVERY_LEASE)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    webhook = delivery.webhook
    timestamp = int(time.time())
    # The timestamp is in the signed body (and repeated in a header): a receiver that refuses
    # old timestamps refuses replays, and nobody can change it without the secret.
    body = json.dumps(
        {**delivery.payload, "delivery": str(delivery.pk), "timestamp": timestamp},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Segweb-Event": delivery.event,
        "X-Segweb-Delivery": str(delivery.pk),
        "X-Segweb-Timestamp": str(timestamp),
        "X-Segweb-Signature": outbound.sign(body, webhook.secret),
    }
    started = time.perf_counter()
    http_status, error = None, ""
    try:  # outside any transaction: the receiver may take seconds
        answer = outbound.post(
            webhook.url, body, headers, allow_loopback=settings.SEGWEB["WEBHOOK_ALLOW_LOOPBACK"]
        )
    except outbound.DestinationRefused as exc:
        outcome, error = WebhookAttempt.Outcome.REFUSED, str(exc)
    except requests.RequestException as exc:
        outcome, error = WebhookAttempt.Outcome.NETWORK_ERROR, _describe_network_error(exc)
    else:
        http_status = answer.status
        if 200 <= answer.status < 300:
            outcome = WebhookAttempt.Outcome.SUCCESS
        else:
            outcome = WebhookAttempt.Outcome.HTTP_ERROR
            error = f"HTTP {answer.status} {answer.reason}".strip()
            if 300 <= answer.status < 400:
                error += " (redirects are not followed)"
    duration_ms = round((time.perf_counter() - started) * 1000)
    done = timezone.now()
    if outcome == WebhookAttempt.Outcome.SUCCESS:
        update = {"status": WebhookDelivery.Status.DELIVERED, "next_attempt_at": None,
                  "finished_at": done}  # fmt: skip
    elif delivery.attempts >= DELIVERY_MAX_ATTEMPTS:
        update = {"status": WebhookDelivery.Status.FAILED, "next_attempt_at": None,
                  "finished_at": done}  # fmt: skip
    else:
        backoff = DELIVERY_FIRST_RETRY * DELIVERY_BACKOFF_FACTOR ** (delivery.attempts - 1)
        update = {"next_attempt_at": done + backoff}
    with transaction.atomic():
        current = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.PENDING, attempts=delivery.attempts
        ).update(**update)
        if not current:  # the webhook was deleted meanwhile (or the lease ran out)
            return None
        return WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            at=now,
            outcome=outcome,
            http_status=http_status,
            error=error[:2000],
            duration_ms=duration_ms,
        )


def _describe_network_error(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout):
        return "No answer within the timeout."
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error: the certificate could not be verified."
    if isinstance(exc, requests.ConnectionError):
        return "Could not connect."
    return f"Request failed ({type(exc).__name__})."


def webhooks_sweep(*, publish: Callable[[uuid.UUID], None] | None = None) -> int:
    """Publish deliveries whose retry is due (or whose first message was lost). Beat runs it
    every 15 s; a duplicate message is harmless, only one claim succeeds."""
    now = timezone.now()
    publish = publish or _publish_delivery
    due = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
        )
        .filter(Q(attempts__gt=0) | Q(created_at__lt=now - timedelta(seconds=5)))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:500]
    )
    for delivery_id in due:
        publish(delivery_id)
    _deliveries_prune(before=now - DELIVERY_KEPT)
    return len(due)


def _deliveries_prune(*, before: datetime) -> None:
    """Forget finished deliveries older than ``before``, a bounded batch per sweep (the table
    would otherwise grow with every job of every user with a webhook)."""
    old = WebhookDelivery.objects.filter(finished_at__lt=before).values_list("pk", flat=True)
    WebhookDelivery.objects.filter(pk__in=list(old[:1000])).delete()


# --- Counters for /metrics ------------------------------------------------------------------


def upload_refusal_count(*, reason: str) -> None:
    """Count one refused photo (or archive) by reason, in the database that every web process
    shares. Counting never changes the answer: a database error here is only logged."""
    for _ in range(2):
        try:
            with transaction.atomic():
                if not RefusedUploadCount.objects.filter(reason=reason).update(
                    count=F("count") + 1
                ):
                    RefusedUploadCount.objects.create(reason=reason, count=1)
            return
        except IntegrityError:
            continue  # another process created the row first: add to it
        except DatabaseError:
            break
    logger.warning("metrics: refusal not counted (%s)", reason)


# --- Keeping the queue honest ---------------------------------------------------------------


def jobs_sweep(*, now=None, publish: Callable[[uuid.UUID], None] | None = None) -> dict:
    """Recover jobs a crash or an outage left behind. Celery beat runs it every 30 s.

    - RUNNING with a stale heartbeat (worker killed or machine lost): queued again, or FAILED
      with a message after ``attempt_limit`` tries, so no job stays RUNNING forever;
    - QUEUED but never published (broker was down) or published long ago and not taken
      (broker lost its messages): published again. A duplicate message is harmless: only one
      claim can succeed.
    """
    now = now or timezone.now()
    publish = publish or _publish
    stale = Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    failed_ids = []
    for job_id in stale.filter(attempts__gte=F("attempt_limit")).values_list("pk", flat=True)[:500]:
        if stale.filter(pk=job_id).update(
            status=Job.Status.FAILED,
            finished_at=now,
            error=(
                f"The worker processing this photo stopped unexpectedly ({MAX_ATTEMPTS} "
                "attempts). It may be too large or unusual for this server."
            ),
        ):
            failed_ids.append(job_id)
    failed = len(failed_ids)
    if failed_ids:
        _announce_finished(failed_ids)
    requeued_ids = list(stale.filter(attempts__lt=F("attempt_limit")).values_list("pk", flat=True))
    requeued = Job.objects.filter(pk__in=requeued_ids, status=Job.Status.RUNNING).update(
        status=Job.Status.QUEUED, enqueued_at=None, heartbeat_at=None, started_at=None
    )
    unpublished = list(
        Job.objects.filter(status=Job.Status.QUEUED)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - REQUEUE_AFTER))
        .filter(created_at__lt=now - timedelta(seconds=5))  # leave fresh jobs to on_commit
        .values_list("pk", flat=True)[:500]
    )
    for job_id in unpublished:
        publish(job_id)
    if failed or requeued or unpublished:
        logger.warning(
            "sweep: %d failed, %d re-queued, %d published again",
            failed,
            requeued,
            len(unpublished),
        )
    return {"failed": failed, "requeued": requeued, "published": len(unpublished)}
