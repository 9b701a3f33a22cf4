"""Changing a job's threshold after the fact: what is kept, who may change it, what follows it."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

import segmentation.inference as inference
from segmentation import services
from segmentation.models import Job
from tests.conftest import stored_files
from tests.factories import api_client, create_job, found, succeed

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(owner):
    # cup 0.9, spoon 0.8, bowl 0.7, fork 0.6; kept down to 0.25, shown from 0.5
    return succeed(create_job(owner), labels=("cup", "spoon", "bowl", "fork"))


@pytest.fixture
def no_model(monkeypatch):
    """The model must not run: loading it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference, "load_segmenter", refuse)


def patch(client, job, body, **kwargs):
    return client.patch(
        f"/api/jobs/{job.pk}/", json.dumps(body), content_type="application/json", **kwargs
    )


class Fixed:
    runtime = "torch"
    precision = "fp32"

    def __init__(self, detections):
        self.detections = detections
        self.asked = []

    def predict(self, image, *, score_threshold=0.5):
        self.asked.append(score_threshold)
        return [d for d in self.detections if d.score >= score_threshold]


# --- what a job keeps -----------------------------------------------------------------------


def test_the_worker_keeps_detections_down_to_the_floor_and_remembers_it(
    owner, monkeypatch, settings
):
    settings.SEGWEB = {**settings.SEGWEB, "KEEP_MIN_SCORE": 0.25}
    job = create_job(owner, threshold=0.5)
    scores = [0.9, 0.6, 0.4, 0.3, 0.2]
    segmenter = Fixed([found("dog", s, job, x0=10 + 20 * i) for i, s in enumerate(scores)])
    monkeypatch.setattr(inference, "load_segmenter", lambda name=None, **kwargs: segmenter)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert segmenter.asked == [0.25]
    assert job.kept_min_score == 0.25
    assert job.score_threshold == 0.5
    assert sorted(job.detections.values_list("score", flat=True)) == [0.3, 0.4, 0.6, 0.9]
    assert job.overlay_threshold == 0.5
    assert job.preview.name and job.overlay_thumbnail.name


def test_a_threshold_below_the_floor_is_the_floor(owner, settings):
    settings.SEGWEB = {**settings.SEGWEB, "KEEP_MIN_SCORE": 0.25}
    assert create_job(owner, threshold=0.1).kept_min_score == 0.1
    assert create_job(owner, threshold=0.7).kept_min_score == 0.25


# --- PATCH ----------------------------------------------------------------------------------


def test_patch_changes_the_threshold_without_running_the_model(alice, job, no_model):
    before = Job.objects.get(pk=job.pk)
    response = patch(alice, job, {"score_threshold": 0.75})
    assert response.status_code == 200, response.json()
    data = response.json()
    assert data["score_threshold"] == 0.75
    assert [d["label"] for d in data["detections"]] == ["cup", "spoon"]
    assert data["labels"] == ["cup", "spoon"]
    after = Job.objects.get(pk=job.pk)
    assert after.score_threshold == 0.75
    for field in ("finished_at", "inference_ms", "attempts", "status", "started_at", "total_ms"):
        assert getattr(after, field) == getattr(before, field), field
    assert after.detections.count() == 4  # nothing is deleted: the threshold can come back


def test_lowering_the_threshold_brings_back_what_was_kept(alice, job, no_model):
    patch(alice, job, {"score_threshold": 0.95})
    assert alice.get(f"/api/jobs/{job.pk}/").json()["detections"] == []
    data = patch(alice, job, {"score_threshold": 0.25}).json()
    assert [d["label"] for d in data["detections"]] == ["cup", "spoon", "bowl", "fork"]
    assert data["kept_min_score"] == 0.25


@pytest.mark.parametrize("value", [0.1, 0.2499, 1.01, -1, 50])
def test_a_threshold_outside_what_was_kept_is_a_400_naming_the_range(alice, job, value):
    response = patch(alice, job, {"score_threshold": value})
    assert response.status_code == 400
    assert "from 0.25 to 1" in response.json()["detail"]
    assert Job.objects.get(pk=job.pk).score_threshold == 0.5


@pytest.mark.parametrize("value", ["abc", None, True, [], {}, "", "NaN", "Infinity"])
def test_a_threshold_that_is_not_a_number_is_a_400_naming_the_range(alice, job, value):
    response = patch(alice, job, {"score_threshold": value})
    assert response.status_code == 400
    assert "from 0.25 to 1" in response.json()["detail"]
    assert Job.objects.get(pk=job.pk).score_threshold == 0.5


def test_a_number_sent_as_text_is_accepted(alice, job):
    assert patch(alice, job, {"score_threshold": "0.6"}).json()["score_threshold"] == 0.6


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "from 0.25 to 1"),
        ({"score_threshold": 0.6, "status": "queued"}, "Only score_threshold can be changed"),
        ([0.6], "Send a JSON object"),
    ],
)
def test_other_bodies_are_a_400_saying_what_is_expected(alice, job, body, message):
    response = patch(alice, job, body)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    job.refresh_from_db()
    assert (job.score_threshold, job.status) == (0.5, "succeeded")


def test_another_users_job_is_a_404_and_stays_unchanged(bob, job):
    response = patch(bob, job, {"score_threshold": 0.9})
    assert response.status_code == 404
    assert Job.objects.get(pk=job.pk).score_threshold == 0.5


def test_anonymous_clients_get_a_401(job, client):
    response = patch(client, job, {"score_threshold": 0.9})
    assert response.status_code == 401


def test_a_moderator_allowed_to_change_jobs_may_change_it(charlie, job):
    assert patch(charlie, job, {"score_threshold": 0.9}).status_code == 200


def test_staff_who_may_see_a_job_but_not_change_it_get_a_403(job, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("dana", password="x" * 20, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    client = api_client(viewer)
    assert client.get(f"/api/jobs/{job.pk}/").status_code == 200
    response = patch(client, job, {"score_threshold": 0.9})
    assert response.status_code == 403
    assert "not change it" in response.json()["detail"]
    assert Job.objects.get(pk=job.pk).score_threshold == 0.5


def test_put_is_not_offered(alice, job):
    body = json.dumps({"score_threshold": 0.6})
    response = alice.put(f"/api/jobs/{job.pk}/", body, content_type="application/json")
    assert response.status_code == 405


def test_threshold_changes_are_rate_limited_per_user(alice, job, settings):
    cache.clear()
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    ScopedRateThrottle.THROTTLE_RATES = {**rates, "threshold": "2/min"}
    try:
        codes = [patch(alice, job, {"score_threshold": 0.6}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert alice.get(f"/api/jobs/{job.pk}/").status_code == 200  # reading is not limited
    finally:
        ScopedRateThrottle.THROTTLE_RATES = rates
        cache.clear()


# --- everything follows the threshold -------------------------------------------------------


def test_coco_export_follows_the_threshold(alice, job, no_model):
    patch(alice, job, {"score_threshold": 0.85})
    annotations = alice.get(f"/api/jobs/{job.pk}/coco/").json()["annotations"]
    assert [a["score"] for a in annotations] == [pytest.approx(0.9)]


def test_the_label_filter_and_class_counts_follow_the_threshold(alice, job):
    assert alice.get("/api/jobs/", {"label": "fork"}).json()["count"] == 1
    patch(alice, job, {"score_threshold": 0.85})
    assert alice.get("/api/jobs/", {"label": "fork"}).json()["count"] == 0
    summary = alice.get("/api/jobs/").json()["results"][0]
    assert summary["labels"] == ["cup"]
    assert [(c["label"], c["count"]) for c in summary["classes"]] == [("cup", 1)]
    assert summary["classes"][0]["colour"].startswith("#")


def test_the_overlay_is_redrawn_once_at_the_new_threshold_then_served_as_stored(
    alice, job, no_model, monkeypatch, private_storage, django_capture_on_commit_callbacks
):
    drawn = []
    real_draw = services._draw

    def draw(image, detections, threshold, **kwargs):
        drawn.append(len(detections))
        return real_draw(image, detections, threshold, **kwargs)

    monkeypatch.setattr(services, "_draw", draw)
    old_overlay = Job.objects.get(pk=job.pk).overlay.name
    data = patch(alice, job, {"score_threshold": 0.75}).json()
    assert data["overlay_url"].endswith("/overlay/?v=0.75")  # a new URL: no stale cache
    assert drawn == []  # drawn on demand, not on every change

    with django_capture_on_commit_callbacks(execute=True):
        first = alice.get(f"/api/jobs/{job.pk}/overlay/")
    assert first.status_code == 200 and first["Content-Type"] == "image/png"
    assert drawn == [2]  # cup and spoon
    again = alice.get(f"/api/jobs/{job.pk}/overlay/")
    thumbnail = alice.get(f"/api/jobs/{job.pk}/thumbnail/")
    assert again.status_code == thumbnail.status_code == 200
    assert drawn == [2]  # a repeated download (and the thumbnail) cost nothing more
    job.refresh_from_db()
    assert job.overlay_threshold == 0.75
    assert job.overlay.name != old_overlay
    assert old_overlay not in stored_files(private_storage)  # the old files are removed


def test_a_storage_failure_while_redrawing_is_a_503_and_keeps_the_old_overlay(
    alice, job, faulty_storage
):
    patch(alice, job, {"score_threshold": 0.75})
    faulty_storage.fail_save = ("overlays/",)
    response = alice.get(f"/api/jobs/{job.pk}/overlay/")
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]
    job.refresh_from_db()
    assert job.overlay_threshold == 0.5


def test_rerun_takes_the_keep_floor_afresh(job, settings):
    settings.SEGWEB = {**settings.SEGWEB, "KEEP_MIN_SCORE": 0.1}
    services.job_rerun(job=job)
    job.refresh_from_db()
    assert job.kept_min_score == 0.1
    assert (job.overlay.name, job.overlay_thumbnail.name, job.overlay_threshold) == ("", "", None)
