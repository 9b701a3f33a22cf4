"""Files in S3: uploads, overlays and thumbnails in a real S3 server (SeaweedFS), never on disk.

Objects are private, served through short-lived signed URLs, deleted with their job; a store
that is down, refuses our credentials or lacks the bucket gives a 503 and leaves nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from segmentation import services
from segmentation.models import Job
from tests.conftest import image_bytes, photo_upload, stored_files
from tests.factories import create_job, model_finds_nothing, succeed
from tests.live import free_port
from tests.s3 import storage_options

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broken_store(settings, seaweedfs, s3_storage):
    """Point segweb's storage somewhere unusable: ``broken_store("down" | "secret" | "bucket")``."""

    def breaks(how: str) -> None:
        endpoint, options = seaweedfs.endpoint, {"location": s3_storage}
        if how == "down":
            endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        elif how == "secret":
            options["secret"] = "not-the-secret"
        elif how == "bucket":
            options["bucket"] = "no-such-bucket"
        settings.STORAGES = {**settings.STORAGES, "default": storage_options(endpoint, **options)}

    return breaks


def upload(client, photo) -> requests.Response:
    """The upload page's path: its script posts each photo to the API with the session."""
    return client.post("/api/jobs/", {"image": photo, "score_threshold": "0.5"})


def test_files_go_to_the_bucket_and_nothing_to_local_disk(
    owner, seaweedfs, s3_storage, private_storage
):
    job = succeed(create_job(owner))
    assert seaweedfs.object_keys(s3_storage) == sorted(
        f"{s3_storage}/{name}" for name in (job.image.name, job.thumbnail.name, job.overlay.name)
    )
    assert job.image.name == f"uploads/{owner.pk}/{job.pk}.png"
    assert stored_files(private_storage) == []


def test_objects_are_not_public(owner, seaweedfs, s3_storage):
    job = create_job(owner)
    response = requests.get(
        f"{seaweedfs.endpoint}/{seaweedfs.bucket}/{s3_storage}/{job.image}", timeout=10
    )
    assert response.status_code == 403


def test_file_pages_redirect_to_signed_urls_that_expire(
    owner_client, owner, other_user, settings, s3_storage
):
    job = succeed(create_job(owner))
    response = owner_client.get(reverse("job-file", args=[job.pk, "overlay"]))
    assert response.status_code == 302
    signed = response["Location"]
    assert parse_qs(urlsplit(signed).query)["X-Amz-Expires"] == ["300"]  # the default: 5 min
    fetched = requests.get(signed, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content.startswith(b"\x89PNG")

    bob = Client()
    bob.force_login(other_user)
    assert bob.get(reverse("job-file", args=[job.pk, "overlay"])).status_code == 404

    settings.SIGNED_URL_SECONDS = 1
    short = owner_client.get(reverse("job-file", args=[job.pk, "image"]))["Location"]
    time.sleep(2.5)
    expired = requests.get(short, timeout=10)
    assert expired.status_code == 403
    assert b"expired" in expired.content


def test_downloads_are_signed_as_attachments(owner_client, owner, s3_storage):
    job = succeed(create_job(owner))
    response = owner_client.get(reverse("job-file", args=[job.pk, "overlay"]) + "?download=1")
    fetched = requests.get(response["Location"], timeout=10)
    assert fetched.status_code == 200
    assert fetched.headers["Content-Disposition"] == 'attachment; filename="coffee-overlay.png"'


def test_deleting_a_job_deletes_its_objects(
    owner_client, owner, seaweedfs, s3_storage, django_capture_on_commit_callbacks
):
    job = succeed(create_job(owner))
    assert len(seaweedfs.object_keys(s3_storage)) == 3
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("job-delete", args=[job.pk]))
    assert response.status_code == 302
    assert seaweedfs.object_keys(s3_storage) == []


def test_a_worker_reads_the_photo_from_s3_and_writes_the_overlay_there(
    owner, seaweedfs, s3_storage, monkeypatch
):
    model_finds_nothing(monkeypatch)
    job = create_job(owner)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert f"{s3_storage}/{job.overlay.name}" in seaweedfs.object_keys(s3_storage)


@pytest.mark.parametrize("how", ["down", "secret", "bucket"])
def test_an_upload_the_store_refuses_is_a_503_and_leaves_nothing(
    owner_client, seaweedfs, s3_storage, broken_store, how
):
    broken_store(how)
    started = time.monotonic()
    response = upload(owner_client, photo_upload())
    assert response.status_code == 503
    assert response.json()["detail"] == "The file store is unavailable; try again shortly."
    assert time.monotonic() - started < 15  # bounded retries, not botocore's minutes
    assert not Job.objects.exists()
    assert seaweedfs.object_keys(s3_storage) == []


@pytest.mark.parametrize("how", ["down", "secret", "bucket"])
def test_a_worker_that_cannot_read_the_photo_fails_the_job(owner, s3_storage, broken_store, how):
    job = create_job(owner)
    broken_store(how)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The uploaded photo could not be read from storage."


def test_a_worker_that_cannot_write_the_overlay_fails_the_job(
    owner, s3_storage, broken_store, monkeypatch
):
    job = create_job(owner)
    png = ContentFile(image_bytes())
    result = services._Result([], services._Pictures(0.5, png, png, png), "torch", 5)
    monkeypatch.setattr(services, "_segment", lambda job: result)
    broken_store("secret")
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The file store is unavailable; try again shortly."
    assert not job.overlay


def test_readyz_checks_the_bucket(client, s3_storage):
    response = client.get(reverse("readyz"))
    assert response.status_code == 200
    assert response.json()["checks"]["storage"] == "ok"


@pytest.mark.parametrize(("how", "says"), [("down", "EndpointConnectionError"),
                                           ("secret", "403"), ("bucket", "403")])  # fmt: skip
def test_readyz_names_the_store_when_it_is_unusable(client, broken_store, how, says):
    broken_store(how)
    response = client.get(reverse("readyz"))
    assert response.status_code == 503
    assert says in response.json()["checks"]["storage"]
    assert response.json()["checks"]["database"] == "ok"


def test_settings_build_the_s3_storage_from_the_environment(seaweedfs, tmp_path):
    """The real settings path: only environment variables, as in production."""
    code = (
        "from django.core.files.base import ContentFile\n"
        "from django.core.files.storage import default_storage as s\n"
        "from segmentation import health\n"
        "name = s.save('probe/hello.txt', ContentFile(b'hello'))\n"
        "assert s.open(name).read() == b'hello'\n"
        "assert 'X-Amz-Signature=' in s.url(name) and 'X-Amz-Expires=120' in s.url(name)\n"
        "assert health.readiness()['storage'] is None\n"
        "s.delete(name)\n"
        "print(type(s._wrapped).__name__)\n"
    )
    env = {
        **os.environ,
        **seaweedfs.environment(),
        "SEGWEB_SIGNED_URL_SECONDS": "120",
        "SEGWEB_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("S3Storage")
    assert not (tmp_path / "media").exists()
    assert seaweedfs.object_keys("probe/") == []
