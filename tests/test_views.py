"""HTML pages: who sees what, uploads, history filters, the job page and its files."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from segmentation import services
from segmentation.models import Collection, Job
from tests.conftest import image_bytes, photo_upload, stored_files
from tests.factories import create_job, fail, succeed
from tests.photos import CHELSEA, ROCKET

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(owner):
    return succeed(create_job(owner))


def job_pages(job):
    return [
        reverse("job-detail", args=[job.pk]),
        reverse("job-status", args=[job.pk]),
        reverse("job-coco", args=[job.pk]),
        reverse("job-file", args=[job.pk, "image"]),
        reverse("job-file", args=[job.pk, "overlay"]),
        reverse("job-file", args=[job.pk, "thumbnail"]),
    ]


def test_every_page_redirects_anonymous_visitors_to_sign_in(client, job):
    for url in [reverse("upload"), reverse("job-list"), *job_pages(job)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url
    response = client.post(reverse("job-delete", args=[job.pk]))
    assert response.status_code == 302
    assert Job.objects.filter(pk=job.pk).exists()


def test_another_users_job_is_a_404_on_every_page(client, other_user, job):
    client.force_login(other_user)
    for url in job_pages(job):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("job-delete", args=[job.pk])).status_code == 404
    assert Job.objects.filter(pk=job.pk).exists()
    assert job.original_filename.encode() not in client.get(reverse("job-list")).content


def test_the_owner_sees_every_page(owner_client, job):
    for url in job_pages(job):
        assert owner_client.get(url).status_code == 200, url


def test_staff_can_open_any_job_for_moderation(client, staff, job):
    client.force_login(staff)
    for url in job_pages(job):
        assert client.get(url).status_code == 200, url


def test_a_hidden_job_stays_in_its_owners_history_with_the_reason_but_not_its_files(
    owner_client, job, staff
):
    services.job_hide(job=job, by=staff, reason="a copyrighted picture")
    history = owner_client.get(reverse("job-list")).content.decode()
    assert "coffee.png" in history
    assert "Hidden by a moderator" in history
    assert "a copyrighted picture" in history
    assert reverse("job-file", args=[job.pk, "thumbnail"]) not in history
    page = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert "A moderator hid this job" in page
    assert "a copyrighted picture" in page
    assert reverse("job-file", args=[job.pk, "image"]) not in page
    assert reverse("job-coco", args=[job.pk]) not in page
    for url in job_pages(job)[2:]:  # the files and the COCO file
        response = owner_client.get(url)
        assert response.status_code == 403, url
        assert b"a copyrighted picture" in response.content, url
    owner_client.post(reverse("job-delete", args=[job.pk]))
    assert not Job.objects.filter(pk=job.pk).exists()


def test_upload_page_offers_only_usable_models(owner_client):
    html = owner_client.get(reverse("upload")).content.decode()
    assert 'value="yolov7_seg"' in html
    assert 'value="maskrcnn_resnet50_fpn_v2"' not in html  # no weights file here
    assert 'name="images"' in html
    assert "multiple" in html


def test_uploading_one_photo_opens_its_job_page(owner_client, owner):
    response = owner_client.post(
        reverse("upload"), {"images": photo_upload(), "score_threshold": "0.4", "model": "auto"}
    )
    job = Job.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == reverse("job-detail", args=[job.pk])
    assert job.score_threshold == 0.4


def test_uploading_several_photos_makes_one_job_each_in_one_collection(owner_client, owner):
    files = [photo_upload(), photo_upload(CHELSEA), photo_upload(ROCKET)]
    response = owner_client.post(
        reverse("upload"), {"images": files, "score_threshold": "0.5", "model": "yolov7_seg"}
    )
    collection = Collection.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == reverse("collection-detail", args=[collection.pk])
    assert Job.objects.filter(owner=owner, collection=collection).count() == 3


def test_bad_files_get_their_error_next_to_their_name(owner_client, owner, private_storage):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [
        photo_upload(),
        SimpleUploadedFile("notes.jpg", b"hello, this is text"),
        SimpleUploadedFile("empty.png", b""),
    ]
    response = owner_client.post(
        reverse("upload"), {"images": files, "score_threshold": "0.5", "model": "auto"},
        follow=True,
    )  # fmt: skip
    html = response.content.decode()
    assert response.status_code == 200
    assert "notes.jpg" in html
    assert "not an image in a supported format" in html
    assert "empty.png" in html
    assert "The file is empty." in html
    assert Job.objects.filter(owner=owner).count() == 1  # the good photo still went through


def test_the_upload_form_has_no_json_mode_and_its_script_uses_the_public_api(owner_client, owner):
    response = owner_client.post(
        reverse("upload"),
        {"images": photo_upload(), "score_threshold": "0.5", "model": "auto"},
        headers={"Accept": "application/json"},
    )
    job = Job.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == reverse("job-detail", args=[job.pk])
    html = owner_client.get(reverse("upload")).content.decode()
    assert f'data-api-url="{reverse("api-job-list")}"' in html
    assert '<script type="module" src="/static/segmentation/upload.js">' in html


def zip_form(members: dict[str, bytes], name: str = "holiday.zip") -> dict:
    from tests.api.test_collections import zip_upload

    return {"images": zip_upload(members, name=name), "score_threshold": "0.5", "model": "auto"}


def test_one_zip_through_the_form_becomes_a_collection_of_its_photos(owner_client, owner):
    members = {"a/coffee.png": image_bytes(), "b/chelsea.png": image_bytes(), "notes.txt": b"hi"}
    response = owner_client.post(reverse("upload"), zip_form(members))
    collection = Collection.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == reverse("collection-detail", args=[collection.pk])
    assert collection.name == "holiday"
    assert Job.objects.filter(owner=owner, collection=collection).count() == 2
    assert [r["name"] for r in collection.rejected] == ["notes.txt"]


def test_a_zip_is_known_by_its_first_bytes_whatever_its_name(owner_client, owner):
    members = {"coffee.png": image_bytes(), "chelsea.png": image_bytes()}
    response = owner_client.post(reverse("upload"), zip_form(members, name="photos.bin"))
    assert response.status_code == 302
    assert Job.objects.filter(owner=owner, collection__isnull=False).count() == 2


@pytest.mark.parametrize(
    ("members", "name", "message"),
    [
        ({"a.png": b"png", "bomb.bmp": b"\x00" * (50 * 1024 * 1024)}, "bomb.zip", "zip bomb"),
        (None, "fake.zip", "not a ZIP archive"),
    ],
)
def test_a_refused_zip_says_why_on_the_page_and_keeps_nothing(
    owner_client, private_storage, members, name, message
):
    if members is None:
        from django.core.files.uploadedfile import SimpleUploadedFile

        form = {"images": SimpleUploadedFile(name, b"hello, this is text"), "model": "auto"}
        form["score_threshold"] = "0.5"
    else:
        form = zip_form(members, name=name)
    response = owner_client.post(reverse("upload"), form)
    assert response.status_code == 400
    html = response.content.decode()
    assert name in html and message in html
    assert not Collection.objects.exists() and not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_the_upload_page_accepts_zips_and_folders(owner_client):
    html = owner_client.get(reverse("upload")).content.decode()
    assert 'accept="image/*,.heic,.heif,.zip,application/zip"' in html
    assert "webkitdirectory" in html
    assert "Drop photos, a folder or a ZIP" in html
    assert 'data-archive-max-files="500"' in html
    assert f'data-collection-api-url="{reverse("api-collection-list")}"' in html


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"score_threshold": "1.5", "model": "auto"}, "score_threshold"),
        ({"score_threshold": "abc", "model": "auto"}, "score_threshold"),
        ({"score_threshold": "0.5", "model": "deeplab"}, "model"),
        ({"score_threshold": "0.5", "model": "auto", "images": []}, "Choose at least one photo"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_stored(
    owner_client, private_storage, fields, message
):
    data = {"images": [photo_upload()], **fields}
    response = owner_client.post(reverse("upload"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_oversized_upload_is_413(owner_client, settings, private_storage):
    settings.SEGWEB = {**settings.SEGWEB, "MAX_UPLOAD_BYTES": 10_000}
    response = owner_client.post(
        reverse("upload"), {"images": photo_upload(), "score_threshold": "0.5", "model": "auto"}
    )
    assert response.status_code == 413
    assert "limit" in response.content.decode()
    assert not Job.objects.exists()


def test_history_lists_newest_first_with_classes(owner_client, owner):
    older = succeed(create_job(owner), labels=("cat",))
    newer = succeed(create_job(owner), labels=("cup", "spoon"))
    html = owner_client.get(reverse("job-list")).content.decode()
    assert html.index(str(newer.pk)) < html.index(str(older.pk))
    assert 'href="?has=spoon"' in html
    assert 'aria-label="1 spoon">spoon <span class="chip-count">1</span></a>' in html


def test_history_filters_by_class_and_status(owner_client, owner):
    cat = succeed(create_job(owner), labels=("cat",))
    cup = succeed(create_job(owner), labels=("cup",))
    failed = fail(create_job(owner))
    html = owner_client.get(reverse("job-list"), {"label": "cat"}).content.decode()
    assert str(cat.pk) in html
    assert str(cup.pk) not in html
    html = owner_client.get(reverse("job-list"), {"status": "failed"}).content.decode()
    assert str(failed.pk) in html
    assert str(cat.pk) not in html


def test_history_paginates(owner_client, owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "HISTORY_PAGE_SIZE": 2}
    jobs = [create_job(owner, photo_upload()) for _ in range(3)]
    first = owner_client.get(reverse("job-list")).content.decode()
    second = owner_client.get(reverse("job-list"), {"page": 2}).content.decode()
    assert str(jobs[0].pk) in second
    assert str(jobs[0].pk) not in first
    assert "Page 1 of 2" in first


def test_job_page_shows_detections_and_downloads(owner_client, job):
    html = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert "cup" in html
    assert "Download overlay (PNG)" in html
    assert 'data-finished="true"' in html


def test_failed_job_page_says_why(owner_client, owner):
    job = fail(create_job(owner), "The photo is too dark to see anything.")
    html = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert "could not be segmented" in html
    assert "The photo is too dark to see anything." in html


def test_the_owner_retries_a_failed_job_from_its_page(owner_client, owner):
    job = fail(create_job(owner))
    page = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert f'action="{reverse("job-retry", args=[job.pk])}"' in page
    response = owner_client.post(reverse("job-retry", args=[job.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("job-detail", args=[job.pk])
    assert "Queued again." in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.QUEUED, 1)


def test_retry_of_a_job_that_did_not_fail_says_so(owner_client, job):
    response = owner_client.post(reverse("job-retry", args=[job.pk]), follow=True)
    assert "Only a failed job can be retried; this one is succeeded." in response.content.decode()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_another_user_cannot_retry_a_job(client, other_user, owner):
    job = fail(create_job(owner))
    client.force_login(other_user)
    assert client.post(reverse("job-retry", args=[job.pk])).status_code == 404
    assert client.get(reverse("job-retry", args=[job.pk])).status_code == 405
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED


def test_the_retry_button_obeys_the_job_rate(owner_client, owner, settings):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    ScopedRateThrottle.THROTTLE_RATES = {**rates, "job_create": "1/min"}
    try:
        first, second = fail(create_job(owner)), fail(create_job(owner))
        owner_client.post(reverse("job-retry", args=[first.pk]))
        response = owner_client.post(reverse("job-retry", args=[second.pk]), follow=True)
        assert "Too many jobs for now" in response.content.decode()
        second.refresh_from_db()
        assert second.status == Job.Status.FAILED
    finally:
        ScopedRateThrottle.THROTTLE_RATES = rates
        cache.clear()


def test_status_endpoint_reports_progress(owner_client, owner):
    job = create_job(owner)
    data = owner_client.get(reverse("job-status", args=[job.pk])).json()
    assert data["status"] == "queued"
    assert data["finished"] is False
    assert "Waiting for a worker" in data["html"]


def test_files_are_served_privately_with_their_type(owner_client, job):
    response = owner_client.get(reverse("job-file", args=[job.pk, "overlay"]), {"download": "1"})
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("attachment;")
    assert "coffee-overlay.png" in response["Content-Disposition"]
    assert response["Cache-Control"].startswith("private")
    assert owner_client.get(reverse("job-file", args=[job.pk, "secrets"])).status_code == 404


def test_coco_download_is_valid_coco(owner_client, job):
    from pycocotools.coco import COCO

    response = owner_client.get(reverse("job-coco", args=[job.pk]))
    data = json.loads(response.content)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    assert len(coco.getAnnIds()) == 2
    assert coco.loadCats(47)[0]["name"] == "cup"
    assert data["annotations"][0]["score"] == pytest.approx(0.9)


def test_coco_download_waits_for_success(owner_client, owner):
    job = create_job(owner)
    assert owner_client.get(reverse("job-coco", args=[job.pk])).status_code == 404


def test_delete_removes_the_job_and_its_files(
    owner_client, job, private_storage, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("job-delete", args=[job.pk]))
    assert response.status_code == 302
    assert not Job.objects.filter(pk=job.pk).exists()
    assert stored_files(private_storage) == []


def test_sign_up_then_upload(client, django_user_model):
    response = client.post(
        reverse("signup"),
        {
            "username": "dora",
            "password1": "a-long-passphrase-1",
            "password2": "a-long-passphrase-1",
        },
    )
    assert response.status_code == 302
    assert django_user_model.objects.filter(username="dora").exists()
    assert client.get(reverse("upload")).status_code == 200


def test_sign_up_can_be_switched_off(client, settings):
    settings.SIGNUP_ENABLED = False
    assert client.get(reverse("signup")).status_code == 404
    assert b"Create an account" not in client.get(reverse("login")).content


def test_sign_in_page_works(client, owner):
    from tests.conftest import PASSWORD

    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("job-list")


def test_deactivated_users_cannot_use_the_pages(owner_client, owner, job):
    owner.is_active = False
    owner.save()
    assert owner_client.get(reverse("job-detail", args=[job.pk])).status_code == 302


def test_healthz_and_readyz(client):
    assert client.get(reverse("healthz")).status_code == 200
    response = client.get(reverse("readyz"))
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "database": "ok",
        "models": "ok",
        "storage": "ok",
        "broker": "ok",
    }


def test_readyz_names_what_is_down(client, monkeypatch):
    def broker_down():
        raise ConnectionRefusedError("no broker")

    monkeypatch.setattr("segmentation.health._check_broker", broker_down)
    response = client.get(reverse("readyz"))
    assert response.status_code == 503
    assert "ConnectionRefusedError" in response.json()["checks"]["broker"]
    assert response.json()["checks"]["database"] == "ok"


def test_unusual_but_valid_images_are_accepted(owner_client, owner):
    from django.core.files.uploadedfile import SimpleUploadedFile

    cases = {
        "gray16.png": image_bytes(mode="I;16", color=40000),
        "cmyk.jpg": image_bytes(fmt="JPEG", mode="CMYK", color=(0, 255, 255, 0)),
        "palette.gif": image_bytes(fmt="GIF", mode="P", color=3),
        "alpha.webp": image_bytes(fmt="WEBP", mode="RGBA", color=(0, 0, 255, 128)),
    }
    for name, data in cases.items():
        response = owner_client.post(
            reverse("upload"),
            {"images": SimpleUploadedFile(name, data), "score_threshold": "0.5", "model": "auto"},
        )
        assert response.status_code == 302, (name, response.content)
    assert Job.objects.filter(owner=owner).count() == len(cases)


def test_job_page_lists_every_kept_instance_and_hides_those_below_the_threshold(
    owner_client, owner
):
    job = succeed(create_job(owner), labels=("cup", "spoon", "bowl"))
    services.job_set_threshold(job=job, threshold=0.75)
    html = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert '<span id="shown-count">2</span>' in html
    assert html.count('<tr data-rank="') == 3
    assert '<tr data-rank="2" tabindex="0" hidden>' in html
    data = json.loads(
        html.split('id="viewer-data" type="application/json">')[1].split("</script>")[0]
    )
    assert (data["threshold"], data["min"], data["canChange"]) == (0.75, 0.25, True)
    assert [i[1] for i in data["instances"]] == ["cup", "spoon", "bowl"]
    assert all(i[8].startswith("#") and isinstance(i[9], str) for i in data["instances"])


def test_job_page_has_no_inline_script_handler_or_style(owner_client, job):
    html = owner_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert " style=" not in html
    assert " onsubmit=" not in html and " onclick=" not in html
    scripts = html.split("<script")[1:]
    assert all(
        ' src="' in s.split(">")[0] or "application/json" in s.split(">")[0] for s in scripts
    )


def test_history_chips_count_instances_above_each_jobs_threshold(owner_client, owner):
    job = succeed(create_job(owner), labels=("cup", "cup", "spoon"))
    html = owner_client.get(reverse("job-list")).content.decode()
    assert 'aria-label="2 cup"' in html and 'aria-label="1 spoon"' in html
    services.job_set_threshold(job=job, threshold=0.85)
    html = owner_client.get(reverse("job-list")).content.decode()
    assert 'aria-label="1 cup"' in html and "spoon" not in html
    assert (
        str(job.pk)
        not in owner_client.get(reverse("job-list"), {"label": "spoon"}).content.decode()
    )


def test_history_polls_one_api_request_for_its_waiting_jobs(owner_client, owner):
    waiting = [create_job(owner) for _ in range(2)]
    done = succeed(create_job(owner))
    ids = ",".join(str(j.pk) for j in waiting)
    body = owner_client.get("/api/jobs/", {"id": ids}).json()
    assert {r["id"] for r in body["results"]} == {str(j.pk) for j in waiting}
    assert str(done.pk) not in {r["id"] for r in body["results"]}
    assert owner_client.get("/api/jobs/", {"id": "not-a-uuid"}).status_code == 400
