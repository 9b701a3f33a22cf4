"""What bounds an upload beyond its own validity: the job rate counted per photo and shared by
the API and the form, the per-user quotas, and the web process's decoding slots."""

from __future__ import annotations

import threading

import pytest
from django.urls import reverse
from rest_framework.throttling import ScopedRateThrottle

from segmentation import decoding
from segmentation.models import Collection, Job
from tests.conftest import image_bytes, photo_upload, stored_files
from tests.factories import api_client, create_job, model_finds_nothing, succeed
from tests.photos import CHELSEA, ROCKET

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_rate(settings):
    """Set the job rate for one test (DRF reads its rates into a class attribute)."""
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]

    def set_rate(rate: str) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {**rates, "job_create": rate},
        }
        ScopedRateThrottle.THROTTLE_RATES = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]

    yield set_rate
    ScopedRateThrottle.THROTTLE_RATES = rates


def form(*files, **fields):
    return {"images": list(files), "score_threshold": "0.5", "model": "auto", **fields}


# --- the job rate, per photo, one bucket -----------------------------------------------------


def test_the_form_is_refused_once_the_api_has_used_the_job_rate(owner_client, owner, job_rate):
    job_rate("2/min")
    alice = api_client(owner)
    assert [alice.post("/api/jobs/", {"image": photo_upload()}).status_code for _ in "ab"] == [
        201,
        201,
    ]
    response = owner_client.post(reverse("upload"), form(photo_upload()))
    assert response.status_code == 429
    assert "Too many jobs for now" in response.content.decode()
    assert int(response["Retry-After"]) > 0
    assert Job.objects.filter(owner=owner).count() == 2


def test_a_form_with_more_photos_than_the_rate_has_left_keeps_nothing(
    owner_client, owner, job_rate, private_storage
):
    job_rate("3/min")
    assert owner_client.post(reverse("upload"), form(photo_upload())).status_code == 302
    response = owner_client.post(
        reverse("upload"), form(photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET))
    )
    assert response.status_code == 429
    assert "3 photo(s) do not fit" in response.content.decode()
    assert Job.objects.filter(owner=owner).count() == 1
    assert not Collection.objects.exists()
    assert len(stored_files(private_storage)) == 2  # the first job's photo and thumbnail


def test_each_photo_of_a_form_counts_against_the_api_rate(owner_client, owner, job_rate):
    job_rate("3/min")
    response = owner_client.post(
        reverse("upload"), form(photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET))
    )
    assert response.status_code == 302
    refused = api_client(owner).post("/api/jobs/", {"image": photo_upload()})
    assert refused.status_code == 429
    assert Job.objects.filter(owner=owner).count() == 3


def test_a_collection_counts_every_photo_and_keeps_nothing_over_the_rate(owner, job_rate):
    job_rate("2/min")
    alice = api_client(owner)
    images = [photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET)]
    response = alice.post("/api/collections/", {"images": images}, format="multipart")
    assert response.status_code == 429
    assert "3 photo(s) do not fit" in response.json()["detail"]
    assert int(response["Retry-After"]) > 0
    assert not Job.objects.exists() and not Collection.objects.exists()
    images = [photo_upload(), photo_upload(CHELSEA)]
    assert alice.post("/api/collections/", {"images": images}).status_code == 201


def test_a_zip_through_the_form_counts_each_of_its_photos_and_keeps_nothing_over_the_rate(
    owner_client, owner, job_rate, private_storage
):
    from tests.api.test_collections import zip_upload

    job_rate("2/min")
    photos = {"a.png": image_bytes(), "b.png": image_bytes(), "c.png": image_bytes()}
    response = owner_client.post(reverse("upload"), form(zip_upload(photos)))
    assert response.status_code == 429
    assert "3 photo(s) do not fit" in response.content.decode()
    assert int(response["Retry-After"]) > 0
    assert not Collection.objects.exists() and not Job.objects.exists()
    assert stored_files(private_storage) == []
    del photos["c.png"]
    assert owner_client.post(reverse("upload"), form(zip_upload(photos))).status_code == 302
    assert api_client(owner).post("/api/jobs/", {"image": photo_upload()}).status_code == 429


# --- quotas ---------------------------------------------------------------------------------


def test_over_the_storage_quota_the_api_answers_413_with_quota_and_usage(
    owner, settings, private_storage
):
    job = succeed(create_job(owner))
    used = job.image_bytes
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_BYTES": used + 1000}
    response = api_client(owner).post("/api/jobs/", {"image": photo_upload()})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "storage quota" in detail and "Delete some jobs" in detail
    assert Job.objects.count() == 1
    assert all(str(job.pk) in name for name in stored_files(private_storage))


def test_over_the_queued_jobs_quota_the_api_answers_429(owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_QUEUED_JOBS": 2}
    alice = api_client(owner)
    assert [alice.post("/api/jobs/", {"image": photo_upload()}).status_code for _ in "ab"] == [
        201,
        201,
    ]
    response = alice.post("/api/jobs/", {"image": photo_upload()})
    assert response.status_code == 429
    assert "2 jobs waiting or running and your quota is 2" in response.json()["detail"]
    assert Job.objects.count() == 2


def test_finished_jobs_leave_the_queued_quota(owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_QUEUED_JOBS": 1}
    succeed(create_job(owner))
    assert api_client(owner).post("/api/jobs/", {"image": photo_upload()}).status_code == 201


def test_the_form_and_collections_obey_the_quotas(owner_client, owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_QUEUED_JOBS": 2}
    response = owner_client.post(
        reverse("upload"), form(photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET))
    )
    assert response.status_code == 429
    assert "your quota is 2" in response.content.decode()
    images = [photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET)]
    refused = api_client(owner).post("/api/collections/", {"images": images})
    assert refused.status_code == 429
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_QUEUED_JOBS": 10, "QUOTA_BYTES": 1000}
    response = owner_client.post(reverse("upload"), form(photo_upload()))
    assert response.status_code == 413
    assert "storage quota" in response.content.decode()
    assert not Job.objects.exists() and not Collection.objects.exists()


def test_a_finished_jobs_result_files_count_in_the_storage_quota(owner, monkeypatch):
    from django.core.files.storage import default_storage

    from segmentation import services
    from segmentation.quotas import usage

    model_finds_nothing(monkeypatch)
    job = create_job(owner)
    assert usage(owner=owner).stored_bytes == job.image_bytes
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    results = sum(
        default_storage.size(f.name) for f in (job.overlay, job.overlay_thumbnail, job.preview)
    )
    assert job.status == Job.Status.SUCCEEDED and results > 0
    assert usage(owner=owner).stored_bytes == job.image_bytes + results
    services.job_rerun(job=job)
    assert usage(owner=owner).stored_bytes == job.image_bytes


# --- decoding slots -------------------------------------------------------------------------


@pytest.fixture
def busy_decoding(settings):
    """Every decoding slot taken by another thread, for the length of the test."""
    settings.SEGWEB = {**settings.SEGWEB, "DECODE_SLOTS": 1, "DECODE_WAIT_SECONDS": 0.1}
    held, release = threading.Event(), threading.Event()

    def hold_the_slot():
        with decoding.decode_slot():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    held.wait(5)
    yield
    release.set()
    holder.join()


def test_when_every_decoding_slot_stays_busy_an_upload_gets_503(owner, owner_client, busy_decoding):
    response = api_client(owner).post("/api/jobs/", {"image": photo_upload()})
    assert response.status_code == 503
    assert "busy" in response.json()["detail"]
    assert int(response["Retry-After"]) >= 1
    page = owner_client.post(reverse("upload"), form(photo_upload()))
    assert page.status_code == 503
    assert "busy" in page.content.decode()
    images = [photo_upload(), photo_upload(CHELSEA)]
    assert api_client(owner).post("/api/collections/", {"images": images}).status_code == 503
    assert not Job.objects.exists() and not Collection.objects.exists()


def test_a_free_slot_lets_the_upload_through(owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "DECODE_SLOTS": 1, "DECODE_WAIT_SECONDS": 0.1}
    with decoding.decode_slot():
        pass
    assert api_client(owner).post("/api/jobs/", {"image": photo_upload()}).status_code == 201


def test_overlays_redrawn_in_the_web_process_take_a_decoding_slot(owner, owner_client, request):
    from segmentation import services

    job = succeed(create_job(owner), labels=("cup", "spoon"))
    services.job_set_threshold(job=job, threshold=0.75)
    request.getfixturevalue("busy_decoding")
    alice = api_client(owner)
    busy = alice.get(f"/api/jobs/{job.pk}/overlay/")
    assert busy.status_code == 503 and int(busy["Retry-After"]) >= 1
    page = owner_client.get(reverse("job-file", args=[job.pk, "overlay"]))
    assert page.status_code == 503 and int(page["Retry-After"]) >= 1
    assert alice.get(f"/api/jobs/{job.pk}/instances/0/cutout/").status_code == 503
    assert alice.get(f"/api/jobs/{job.pk}/instances/0/mask/").status_code == 200
    for fmt in ("coco", "cutouts", "masks"):  # any format may decode the photo
        assert alice.get(f"/api/jobs/{job.pk}/export/?format={fmt}").status_code == 503


def test_retries_obey_the_queued_jobs_quota(owner, settings):
    from tests.factories import fail

    failed = fail(create_job(owner))
    create_job(owner)
    settings.SEGWEB = {**settings.SEGWEB, "QUOTA_QUEUED_JOBS": 1}
    response = api_client(owner).post(f"/api/jobs/{failed.pk}/retry/")
    assert response.status_code == 429
    assert "your quota is 1" in response.json()["detail"]
    failed.refresh_from_db()
    assert failed.status == Job.Status.FAILED


def test_a_collection_retry_counts_each_failed_photo(owner, job_rate):
    from tests.factories import fail

    job_rate("3/min")
    alice = api_client(owner)
    images = [photo_upload(), photo_upload(CHELSEA)]
    collection = alice.post("/api/collections/", {"images": images}).json()
    for job in Job.objects.filter(collection_id=collection["id"]):
        fail(job)
    response = alice.post(f"/api/collections/{collection['id']}/retry/")
    assert response.status_code == 429  # 2 failed photos, 1 left in the rate
    assert Job.objects.filter(status=Job.Status.FAILED).count() == 2


# --- the worker -----------------------------------------------------------------------------


def test_a_stored_file_of_no_photo_shape_fails_its_job_clearly_in_the_worker(owner):
    from django.core.files.storage import default_storage

    from segmentation import services
    from tests.inference.test_image import png_header

    job = create_job(owner)
    # As if it had arrived past the upload check (an older server, a restored backup).
    with default_storage.open(job.image.name, "wb") as f:
        f.write(png_header(1, 39_000_000))
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The image is 1×39000000 pixels; each side must be at least 8 pixels."
