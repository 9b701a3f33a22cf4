"""The REST API: tokens, jobs, filters, files, COCO export, for every persona."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from segmentation import services
from segmentation.models import Job
from tests.conftest import PASSWORD, photo_upload, stored_files
from tests.factories import api_client, create_job, fail, succeed, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(owner):
    return succeed(create_job(owner), labels=("cup", "spoon"))


def job_routes(job):
    base = f"/api/jobs/{job.pk}/"
    return [base, f"{base}coco/", f"{base}image/", f"{base}overlay/", f"{base}thumbnail/"]


# --- tokens -------------------------------------------------------------------------------


def test_token_for_username_and_password(owner):
    response = APIClient().post("/api/auth/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["expiry"] is None  # SEGWEB_TOKEN_TTL_DAYS is unset
    token = response.json()["token"]
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


@pytest.mark.parametrize(
    "credentials",
    [{"username": "alice", "password": "wrong"}, {"username": "nobody", "password": "x"}, {}],
)
def test_bad_credentials_get_a_400_with_a_message(owner, credentials):
    response = APIClient().post("/api/auth/token/", credentials)
    assert response.status_code == 400
    assert response.json()


def test_deactivated_users_get_no_token(owner):
    owner.is_active = False
    owner.save()
    response = APIClient().post("/api/auth/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 400


def test_rotate_replaces_the_token_it_was_sent_with(owner):
    old, laptop = token_for(owner), token_for(owner)
    new = api_client().post("/api/auth/token/rotate/", HTTP_AUTHORIZATION=f"Token {old}")
    new = new.json()["token"]
    assert new != old
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {old}").status_code == 401
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {new}").status_code == 200
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {laptop}").status_code == 200


def test_revoke_signs_out_only_the_client_that_sent_it(owner, alice):
    laptop = token_for(owner)
    assert alice.delete("/api/auth/token/").status_code == 204
    assert alice.get("/api/jobs/").status_code == 401
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {laptop}").status_code == 200
    assert AuthToken.objects.filter(user=owner).count() == 1


def test_revoke_all_signs_out_every_client(owner, alice, bob):
    laptop = token_for(owner)
    assert alice.delete("/api/auth/tokens/").status_code == 204
    assert alice.get("/api/jobs/").status_code == 401
    assert api_client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {laptop}").status_code == 401
    assert bob.get("/api/jobs/").status_code == 200  # another user's are untouched


def test_revoking_with_a_session_says_there_is_no_token(client, owner):
    client.force_login(owner)
    response = client.delete("/api/auth/token/")
    assert response.status_code == 400
    assert "/api/auth/tokens/" in response.json()["detail"]


def test_session_authentication_works_too(client, owner, job):
    client.force_login(owner)
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 200


# --- who sees what --------------------------------------------------------------------------


def test_anonymous_gets_401_everywhere(job):
    anonymous = api_client()
    for url in ["/api/jobs/", "/api/models/", "/api/labels/", *job_routes(job)]:
        response = anonymous.get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"].startswith("Token")
    assert anonymous.post("/api/jobs/", {"image": photo_upload()}).status_code == 401
    assert anonymous.delete(f"/api/jobs/{job.pk}/").status_code == 401
    assert Job.objects.count() == 1


def test_another_users_job_is_a_404_on_every_route(bob, job):
    for url in job_routes(job):
        assert bob.get(url).status_code == 404, url
    assert bob.delete(f"/api/jobs/{job.pk}/").status_code == 404
    assert bob.get("/api/jobs/").json()["count"] == 0
    assert Job.objects.filter(pk=job.pk).exists()


def test_owner_reaches_every_route(alice, job):
    for url in job_routes(job):
        assert alice.get(url).status_code == 200, url


def test_staff_can_read_any_job_but_lists_only_their_own(charlie, job):
    for url in job_routes(job):
        assert charlie.get(url).status_code == 200, url
    assert charlie.get("/api/jobs/").json()["count"] == 0


def test_a_hidden_job_is_listed_marked_with_its_results_and_files_withheld(alice, job, staff):
    services.job_hide(job=job, by=staff, reason="spam")
    listed = alice.get("/api/jobs/").json()["results"]
    assert [j["id"] for j in listed] == [str(job.pk)]
    assert listed[0]["hidden"] is True
    assert listed[0]["hidden_reason"] == "spam"
    assert listed[0]["hidden_at"]
    assert listed[0]["labels"] == [] and listed[0]["thumbnail_url"] is None
    body = alice.get(f"/api/jobs/{job.pk}/").json()
    assert body["hidden"] is True and body["hidden_reason"] == "spam"
    assert body["detections"] == [] and body["image_url"] is None and body["overlay_url"] is None
    for url in job_routes(job)[1:]:
        response = alice.get(url)
        assert response.status_code == 403, url
        assert "spam" in response.json()["detail"], url
    assert alice.delete(f"/api/jobs/{job.pk}/").status_code == 204


def test_a_nonexistent_job_is_a_404(alice):
    assert alice.get("/api/jobs/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert alice.get("/api/jobs/not-a-uuid/").status_code == 404


# --- creating jobs --------------------------------------------------------------------------


def test_create_returns_201_with_the_job(alice, owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice.post(
            "/api/jobs/",
            {"image": photo_upload(), "score_threshold": "0.3", "model": "yolov7_seg"},
            format="multipart",
        )
    assert response.status_code == 201
    data = response.json()
    job = Job.objects.get(owner=owner)
    assert data["id"] == str(job.pk)
    assert data["status"] == "queued"
    assert data["url"] == f"http://testserver/api/jobs/{job.pk}/"
    assert response["Location"] == data["url"]
    assert data["score_threshold"] == 0.3
    assert data["model"] == "yolov7_seg"
    assert data["overlay_url"] is None
    assert data["image_url"] == f"http://testserver/api/jobs/{job.pk}/image/"
    assert len(callbacks) == 1  # queued on commit


def test_create_defaults_threshold_and_model(alice):
    data = alice.post("/api/jobs/", {"image": photo_upload()}, format="multipart").json()
    assert data["score_threshold"] == 0.5
    assert data["model"] == "yolov7_seg"  # what auto resolves to without Mask R-CNN weights


def test_job_creation_is_throttled_per_user(alice, bob, settings):
    from django.core.cache import cache

    cache.clear()
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**rates, "job_create": "2/min"},
    }
    from rest_framework.throttling import ScopedRateThrottle

    ScopedRateThrottle.THROTTLE_RATES = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    try:
        codes = [
            alice.post("/api/jobs/", {"image": photo_upload()}, format="multipart").status_code
            for _ in range(3)
        ]
        assert codes == [201, 201, 429]
        blocked = alice.post("/api/jobs/", {"image": photo_upload()}, format="multipart")
        assert int(blocked["Retry-After"]) > 0
        assert "throttled" in blocked.json()["detail"].lower()
        assert (
            bob.post("/api/jobs/", {"image": photo_upload()}, format="multipart").status_code == 201
        )
        assert alice.get("/api/jobs/").status_code == 200  # reading is not throttled
    finally:
        ScopedRateThrottle.THROTTLE_RATES = rates
        cache.clear()


# --- reading jobs ---------------------------------------------------------------------------


def test_detail_has_detections_with_coco_rle(alice, job):
    data = alice.get(f"/api/jobs/{job.pk}/").json()
    assert data["status"] == "succeeded"
    assert data["labels"] == ["cup", "spoon"]
    assert data["error"] == ""
    assert data["original_filename"] == "coffee.png"
    assert (data["width"], data["height"]) == (600, 400)
    cup = data["detections"][0]
    assert set(cup) == {"label", "score", "box", "area", "segmentation"}
    assert cup["label"] == "cup"
    assert len(cup["box"]) == 4
    assert cup["segmentation"]["size"] == [400, 600]
    assert isinstance(cup["segmentation"]["counts"], str)
    assert data["overlay_url"] == f"http://testserver/api/jobs/{job.pk}/overlay/?v=0.5"


def test_failed_job_has_its_error(alice, owner):
    job = fail(create_job(owner), "The model could not run.")
    data = alice.get(f"/api/jobs/{job.pk}/").json()
    assert data["status"] == "failed"
    assert data["error"] == "The model could not run."
    assert data["detections"] == []


def test_list_is_paginated_newest_first(alice, owner):
    jobs = [create_job(owner) for _ in range(3)]
    first = alice.get("/api/jobs/", {"page_size": 2}).json()
    assert first["count"] == 3
    assert [j["id"] for j in first["results"]] == [str(jobs[2].pk), str(jobs[1].pk)]
    assert first["previous"] is None
    second = alice.get(first["next"]).json()
    assert [j["id"] for j in second["results"]] == [str(jobs[0].pk)]


def test_list_filters(alice, owner):
    cat = succeed(create_job(owner), labels=("cat",))
    cup = succeed(create_job(owner), labels=("cup",))
    failed = fail(create_job(owner))
    Job.objects.filter(pk=cat.pk).update(created_at=timezone.now() - timedelta(days=3))

    def ids(**params):
        return {j["id"] for j in alice.get("/api/jobs/", params).json()["results"]}

    assert ids(label="cat") == {str(cat.pk)}
    assert ids(status="failed") == {str(failed.pk)}
    assert ids(model="yolov7_seg") == {str(cat.pk), str(cup.pk), str(failed.pk)}
    assert ids(model="maskrcnn_resnet50_fpn") == set()
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(created_after=since) == {str(cup.pk), str(failed.pk)}
    assert ids(created_before=since) == {str(cat.pk)}


@pytest.mark.parametrize("params", [{"status": "exploded"}, {"created_after": "yesterday"}])
def test_bad_filter_values_are_a_400(alice, params):
    response = alice.get("/api/jobs/", params)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == list(params)
    assert next(iter(params)) in response.json()["detail"]


def test_coco_export_loads_in_pycocotools(alice, job):
    from pycocotools.coco import COCO

    data = alice.get(f"/api/jobs/{job.pk}/coco/").json()
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    results = coco.loadRes(data["annotations"])
    assert len(results.getAnnIds()) == 2
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= {"cup", "spoon"}
    assert data["images"][0]["width"] == 600


def test_coco_export_of_an_unfinished_job_is_a_409(alice, owner):
    job = create_job(owner)
    response = alice.get(f"/api/jobs/{job.pk}/coco/")
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]


def test_files_are_downloadable_with_the_token(alice, job):
    overlay = alice.get(f"/api/jobs/{job.pk}/overlay/")
    assert overlay.status_code == 200
    assert overlay["Content-Type"] == "image/png"
    assert b"".join(overlay.streaming_content).startswith(b"\x89PNG")
    assert alice.get(f"/api/jobs/{job.pk}/secrets/").status_code == 404


def test_delete_removes_the_job_and_its_files(
    alice, job, private_storage, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert alice.delete(f"/api/jobs/{job.pk}/").status_code == 204
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_models_lists_every_model_saying_which_run_and_why_not(alice):
    data = {m["name"]: m for m in alice.get("/api/models/").json()}
    assert data["yolov7_seg"]["usable"] is True
    assert data["yolov7_seg"]["default"] is True
    assert data["yolov7_seg"]["reason"] == ""
    maskrcnn = data["maskrcnn_resnet50_fpn"]
    assert maskrcnn["usable"] is False and maskrcnn["default"] is False
    # The reason names the missing file, never where the server keeps it.
    assert "maskrcnn_resnet50_fpn_coco.pth not found" in maskrcnn["reason"]
    assert "/" not in maskrcnn["reason"].split("(see")[0]


# --- retrying failed jobs -------------------------------------------------------------------


def test_the_owner_retries_a_failed_job_and_its_attempts_keep_counting(
    alice, owner, django_capture_on_commit_callbacks
):
    job = fail(create_job(owner))
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice.post(f"/api/jobs/{job.pk}/retry/")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["status"], body["error"], body["attempts"]) == ("queued", "", 1)
    assert len(callbacks) == 1  # published once the retry commits


def test_only_a_failed_job_can_be_retried(alice, owner, job):
    queued = create_job(owner)
    for target, status in ((job, "succeeded"), (queued, "queued")):
        response = alice.post(f"/api/jobs/{target.pk}/retry/")
        assert response.status_code == 409
        assert f"this one is {status}" in response.json()["detail"]


def test_another_users_failed_job_cannot_be_retried(bob, owner):
    job = fail(create_job(owner))
    assert bob.post(f"/api/jobs/{job.pk}/retry/").status_code == 404
    assert api_client().post(f"/api/jobs/{job.pk}/retry/").status_code == 401
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED


def test_a_retry_counts_against_the_job_rate(alice, owner, settings):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    ScopedRateThrottle.THROTTLE_RATES = {**rates, "job_create": "1/min"}
    try:
        first, second = fail(create_job(owner)), fail(create_job(owner))
        assert alice.post(f"/api/jobs/{first.pk}/retry/").status_code == 202
        blocked = alice.post(f"/api/jobs/{second.pk}/retry/")
        assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
        assert alice.post("/api/jobs/", {"image": photo_upload()}).status_code == 429
    finally:
        ScopedRateThrottle.THROTTLE_RATES = rates
        cache.clear()


def test_a_retry_is_refused_while_a_worker_reports_the_model_broken(alice, owner):
    job = fail(create_job(owner))
    services.model_report_record(model="yolov7_seg", error=ImportError("No module named 'x'"))
    response = alice.post(f"/api/jobs/{job.pk}/retry/")
    assert response.status_code == 503
    assert "yolov7_seg model cannot run" in response.json()["detail"]
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED


def test_labels_lists_the_80_coco_classes(alice):
    labels = alice.get("/api/labels/").json()
    assert len(labels) == 80
    assert labels[0] == "person"


def test_schema_and_docs_are_served_without_a_cdn(alice):
    schema = alice.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/jobs/" in schema.content
    docs = alice.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs
    assert "cdn" not in docs.lower()
    assert "/static/drf_spectacular_sidecar/" in docs


@pytest.mark.parametrize("param", ["status", "created_after", "created_before"])
def test_an_empty_filter_value_is_a_400_not_no_filter(alice, param):
    response = alice.get("/api/jobs/", {param: ""})
    assert response.status_code == 400
    assert param in response.json()["errors"]


def test_a_cache_outage_does_not_block_uploads(alice, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr("django.core.cache.cache.get", down)
    response = alice.post("/api/jobs/", {"image": photo_upload()}, format="multipart")
    assert response.status_code == 201


def test_a_job_may_ask_for_int8_only_where_the_server_allows_it(alice, settings, monkeypatch):
    monkeypatch.delenv("SEGWEB_PRECISION", raising=False)
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": False}
    refused = alice.post("/api/jobs/", {"image": photo_upload(), "precision": "int8"})
    assert refused.status_code == 400
    assert "choosing the precision is not enabled" in refused.json()["detail"]
    assert not Job.objects.exists()
    settings.SEGWEB = {**settings.SEGWEB, "PRECISION_PER_JOB": True}
    created = alice.post("/api/jobs/", {"image": photo_upload(), "precision": "int8"})
    assert created.status_code == 201
    assert created.json()["precision"] == "int8"
