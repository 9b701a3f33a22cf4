"""Every write and state change of segweb: views, API, admin and tasks only call these.

Jobs move QUEUED -> RUNNING -> SUCCEEDED | FAILED. Each transition is a conditional UPDATE on
the current status, so two workers (or a worker and a moderator) can never both act on a job.
Slow work (storage, the model) stays outside database transactions.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Least
from django.utils import timezone

from . import health
from .classes import class_rows, shown_classes
from .inference import InferenceError, ModelUnavailableError
from .inference.registry import AUTO
from .models import MAX_ATTEMPTS, Detection, Export, Job, JobClass, ModelReport, UserClass
from .uploads import THUMBNAIL_SIZE, UploadError, validate_threshold, validate_upload

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
) -> Job:
    """Validate an upload, store it and its thumbnail, create the job, queue it on commit.

    Raises ``UploadError`` (bad input: 4xx) or ``StorageUnavailable`` (503). Either way nothing
    is left behind: no row, no file.
    """
    threshold = validate_threshold(score_threshold)
    model_name = model_for_new_job(model)
    image = validate_upload(upload)
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
                image=stored[0],
                thumbnail=stored[1],
                original_filename=_clean_filename(upload.name),
                image_format=image.format,
                image_bytes=image.size_bytes,
                width=image.width,
                height=image.height,
                model=model_name,
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
        raise UploadError(str(exc)) from exc


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
        job_succeed(
            job=job,
            detections=result.detections,
            overlay=overlay.png,
            overlay_thumbnail=overlay.thumbnail,
            overlay_threshold=overlay.threshold,
            preview=preview,
            runtime=result.runtime,
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


PREVIEW_SIZE = (1600, 1600)  # the viewer's photo: sharp on screens, a few hundred KB


def _segment(job: Job) -> _Result:
    from .inference import load_segmenter

    image = _load_photo(job)
    segmenter = load_segmenter(job.model)
    model_report_record(model=job.model, runtime=segmenter.runtime, only_if_changed=True)
    started = time.perf_counter()
    # Everything down to the keep floor is stored, so the threshold can be lowered later
    # without running the model again; only what scores above the threshold is shown.
    detections = segmenter.predict(image, score_threshold=job.kept_min_score)
    inference_ms = round((time.perf_counter() - started) * 1000)
    pictures = _draw(image, detections, job.score_threshold)
    return _Result(detections, pictures, segmenter.runtime, inference_ms)


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
            runtime=runtime,
            inference_ms=inference_ms,
            total_ms=total_ms,
            error="",
        )
        if not updated:
            raise IllegalTransition(f"job {job.pk} is no longer running here")
        Detection.objects.bulk_create(rows, batch_size=500)
        job_classes_sync(job_id=job.pk)


def job_fail(*, job: Job, message: str) -> bool:
    """RUNNING -> FAILED with a message for the owner. False if the job had moved on."""
    updated = Job.objects.filter(
        pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts
    ).update(status=Job.Status.FAILED, finished_at=timezone.now(), error=message[:2000])
    if updated:
        logger.info("job %s failed: %s", job.pk, message)
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
    report whether it loads, so that the web process can tell users the truth."""
    from .inference import load_segmenter, resolve_model_name

    try:
        name = resolve_model_name(AUTO)
    except ModelUnavailableError as exc:
        logger.error("worker: no model can run here: %s", exc)
        return
    try:
        segmenter = load_segmenter(name)
    except InferenceError as exc:
        logger.error("worker: model %s cannot load: %s", name, exc)
        model_report_record(model=name, error=exc)
        return
    model_report_record(model=name, runtime=segmenter.runtime)


# --- Changing the threshold after the fact --------------------------------------------------


def can_change_threshold(*, user: AbstractBaseUser, job: Job) -> bool:
    """Whether ``user`` may change ``job``'s threshold: its owner, or a moderator allowed to
    change jobs. The caller has already found the job through ``Job.objects.for_user``."""
    return job.owner_id == user.pk or user.has_perm("segmentation.change_job")


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
    from .inference import InvalidImageError
    from .masks import to_found_all

    try:
        image = _load_photo(job)
    except InvalidImageError as exc:  # the stored photo decoded once; it should again
        raise StorageUnavailable("The stored photo could not be read.") from exc
    shown = to_found_all(job.detections.filter(score__gte=threshold).order_by("rank"))
    pictures = _draw(image, shown, threshold, preview=False)
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


def job_unhide(*, job: Job) -> None:
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(
            hidden=False, hidden_reason="", hidden_at=None, hidden_by=None
        )
        job_classes_sync(job_id=job.pk)


def job_delete(*, job: Job) -> None:
    """Delete a job, its detections and, once that is committed, its files."""
    names = [
        job.image.name,
        job.thumbnail.name,
        job.overlay.name,
        job.overlay_thumbnail.name,
        job.preview.name,
    ]
    with transaction.atomic():
        job_classes_sync(job_id=job.pk, deleting=True)
        Job.objects.filter(pk=job.pk).delete()
        transaction.on_commit(lambda: _delete_files(names))


def user_deactivate(*, user: AbstractBaseUser) -> None:
    """Stop a user from signing in or using the API; their jobs are kept for moderation."""
    from rest_framework.authtoken.models import Token

    with transaction.atomic():
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        Token.objects.filter(user_id=user.pk).delete()


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
    mine = Job.objects.for_user(owner).filter(owner=owner)
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
        Job.objects.for_user(export.owner)
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
    Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
        status=Export.Status.FAILED, finished_at=timezone.now(), error=message[:2000]
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
    failed = stale.filter(attempts__gte=F("attempt_limit")).update(
        status=Job.Status.FAILED,
        finished_at=now,
        error=(
            f"The worker processing this photo stopped unexpectedly ({MAX_ATTEMPTS} attempts). "
            "It may be too large or unusual for this server."
        ),
    )
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
