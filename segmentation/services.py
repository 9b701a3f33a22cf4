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
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import health
from .inference import InferenceError, ModelUnavailableError
from .inference.registry import AUTO
from .inference.runtime import requested_precision
from .models import MAX_ATTEMPTS, Detection, Job, ModelReport
from .uploads import UploadError, validate_threshold, validate_upload

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


class ModelNotRunning(Exception):
    """The job's model cannot run on this server now (a worker reported why): answer 503."""


# --- Creating jobs --------------------------------------------------------------------------


def job_create(
    *,
    owner: AbstractBaseUser,
    upload: UploadedFile | None,
    score_threshold: object = None,
    model: str | None = None,
    precision: str | None = None,
) -> Job:
    """Validate an upload, store it and its thumbnail, create the job, queue it on commit.

    Raises ``UploadError`` (bad input: 4xx) or ``StorageUnavailable`` (503). Either way nothing
    is left behind: no row, no file.
    """
    threshold = validate_threshold(score_threshold)
    model_name = model_for_new_job(model)
    job_precision = precision_for_new_job(precision)
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
                precision=job_precision,
                score_threshold=threshold,
            )
            job_enqueue(job=job)
    except BaseException:
        _delete_files(stored)
        raise
    return job


def model_for_new_job(model: str | None) -> str:
    """The concrete model a new job will use; refuse unknown or unusable models (400)."""
    try:
        return health.resolve_model(model or AUTO)
    except ModelUnavailableError as exc:
        raise UploadError(str(exc)) from exc


def precision_for_new_job(precision: str | None) -> str:
    """The precision a new job asks for: the server's (``SEGWEB_PRECISION``), or the user's when
    ``SEGWEB_PRECISION_PER_JOB`` allows it (400 otherwise, or for an unknown one)."""
    try:
        default = requested_precision()
        if not precision:
            return default
        chosen = requested_precision(precision)
    except ModelUnavailableError as exc:
        raise UploadError(str(exc).replace(" (SEGWEB_PRECISION)", "")) from exc
    if chosen != default and not settings.SEGWEB["PRECISION_PER_JOB"]:
        raise UploadError(
            f"This server runs every job at {default}: choosing the precision is not enabled "
            "(SEGWEB_PRECISION_PER_JOB)."
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
    overlay_name = ""
    try:
        with _Heartbeat(job.pk):
            result = _segment(job)
            overlay_name = _save(f"overlays/{job.owner_id}/{job.pk}.png", result.overlay_png)
        job_succeed(
            job=job,
            detections=result.detections,
            overlay=overlay_name,
            runtime=result.runtime,
            precision=result.precision,
            inference_ms=result.inference_ms,
            total_ms=round((time.perf_counter() - started) * 1000),
        )
    except IllegalTransition:
        _delete_files([overlay_name])  # deleted or re-queued by a moderator meanwhile
        logger.info("job %s: changed while running; result discarded", job.pk)
    except ModelUnavailableError as exc:
        _delete_files([overlay_name])
        logger.error("job %s: model %s cannot run: %s", job.pk, job.model, exc)
        model_report_record(model=job.model, error=exc)
        job_fail(job=job, message=model_unavailable_message(job.model))
    except (InferenceError, StorageUnavailable) as exc:
        _delete_files([overlay_name])
        job_fail(job=job, message=str(exc))
    except SoftTimeLimitExceeded:
        _delete_files([overlay_name])
        limit = settings.SEGWEB["JOB_TIME_LIMIT"]
        job_fail(job=job, message=f"Segmentation took longer than the {limit}-second limit.")
    except Exception:
        _delete_files([overlay_name])
        logger.exception("job %s: unexpected error", job.pk)
        job_fail(job=job, message="Segmentation failed because of an internal error.")
        raise


@dataclass
class _Result:
    detections: list
    overlay_png: ContentFile
    runtime: str
    inference_ms: int
    precision: str = "fp32"


def _segment(job: Job) -> _Result:
    from .inference import load_image, load_segmenter, render_overlay

    try:
        with default_storage.open(job.image.name, "rb") as f:
            data = f.read()
    except Exception as exc:
        logger.exception("job %s: cannot read %s", job.pk, job.image.name)
        raise StorageUnavailable("The uploaded photo could not be read from storage.") from exc
    image = load_image(data, max_pixels=settings.SEGWEB["MAX_PIXELS"])
    # build_export: a missing OpenVINO export is built in the background meanwhile (torch runs
    # this job); the first job after it is installed runs on it.
    segmenter = load_segmenter(job.model, precision=job.precision, build_export=True)
    model_report_record(model=job.model, runtime=segmenter.runtime, only_if_changed=True)
    started = time.perf_counter()
    detections = segmenter.predict(image, score_threshold=job.score_threshold)
    inference_ms = round((time.perf_counter() - started) * 1000)
    buffer = io.BytesIO()
    # compress_level=1: 4x faster than the default on a 12 MP overlay, for ~20% more bytes.
    render_overlay(image, detections).save(buffer, "PNG", compress_level=1)
    return _Result(
        detections,
        ContentFile(buffer.getvalue()),
        segmenter.runtime,
        inference_ms,
        precision=segmenter.precision,
    )


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
    runtime: str,
    inference_ms: int,
    total_ms: int,
    precision: str = "fp32",
) -> None:
    """Record a finished job and its detections atomically (RUNNING -> SUCCEEDED)."""
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
            runtime=runtime,
            precision=precision,
            inference_ms=inference_ms,
            total_ms=total_ms,
            error="",
        )
        if not updated:
            raise IllegalTransition(f"job {job.pk} is no longer running here")
        Detection.objects.bulk_create(rows, batch_size=500)


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


# --- Moderation and owners' actions ---------------------------------------------------------


def job_rerun(*, job: Job) -> Job:
    """Run a finished job again (SUCCEEDED | FAILED -> QUEUED), dropping its old results."""
    old_overlay = job.overlay.name
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
            runtime="",
            inference_ms=None,
            total_ms=None,
        )
        if not updated:
            raise IllegalTransition("Only finished jobs can be run again.")
        Detection.objects.filter(job_id=job.pk).delete()
        job_enqueue(job=job)
        transaction.on_commit(lambda: _delete_files([old_overlay]))
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
    Job.objects.filter(pk=job.pk).update(
        hidden=True, hidden_reason=reason, hidden_at=timezone.now(), hidden_by=by
    )


def job_unhide(*, job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(
        hidden=False, hidden_reason="", hidden_at=None, hidden_by=None
    )


def job_delete(*, job: Job) -> None:
    """Delete a job, its detections and, once that is committed, its files."""
    names = [job.image.name, job.thumbnail.name, job.overlay.name]
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).delete()
        transaction.on_commit(lambda: _delete_files(names))


def user_deactivate(*, user: AbstractBaseUser) -> None:
    """Stop a user from signing in or using the API; their jobs are kept for moderation."""
    from rest_framework.authtoken.models import Token

    with transaction.atomic():
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        Token.objects.filter(user_id=user.pk).delete()


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
