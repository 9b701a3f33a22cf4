"""GET /metrics: who may read it, and that its values are the database's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from segmentation.models import Job
from tests.factories import api_client, create_job, fail, succeed

pytestmark = pytest.mark.django_db
TOKEN = "a-long-metrics-token"


@pytest.fixture
def metrics_on(settings):
    settings.SEGWEB = {**settings.SEGWEB, "METRICS_TOKEN": TOKEN}


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_are_a_404_when_no_token_is_set(client, settings):
    settings.SEGWEB = {**settings.SEGWEB, "METRICS_TOKEN": ""}
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Token {TOKEN}", f"bearer {TOKEN}x", f"Bearer {TOKEN} "]
)
def test_metrics_need_the_bearer_token(client, metrics_on, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"segweb_" not in response.content


def test_a_signed_in_staff_user_still_needs_the_token(client, staff, metrics_on):
    client.force_login(staff)
    assert client.get("/metrics").status_code == 401


def test_jobs_queue_durations_and_refusals_are_counted(client, owner, metrics_on):
    succeed(create_job(owner))
    done = succeed(create_job(owner))
    Job.objects.filter(pk=done.pk).update(total_ms=45_000, inference_ms=40_000)
    fail(create_job(owner))
    old = create_job(owner)
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    api_client(owner).post(
        "/api/jobs/", {"image": SimpleUploadedFile("x.png", b"text")}, format="multipart"
    )

    values = scrape(client)

    model = (("model", "yolov7_seg"),)
    assert values[("segweb_jobs", (("model", "yolov7_seg"), ("status", "succeeded")))] == 2
    assert values[("segweb_jobs", (("model", "yolov7_seg"), ("status", "failed")))] == 1
    assert values[("segweb_jobs", (("model", "yolov7_seg"), ("status", "queued")))] == 1
    assert values[("segweb_jobs", (("model", ""), ("status", "running")))] == 0
    assert values[("segweb_queue_depth", ())] == 1
    assert 299 < values[("segweb_queue_oldest_age_seconds", ())] < 400
    assert values[("segweb_job_duration_seconds_count", model)] == 2
    assert values[("segweb_job_duration_seconds_sum", model)] == pytest.approx(46.5)
    assert values[("segweb_job_duration_seconds_bucket", (("le", "2.0"), *model))] == 1
    assert values[("segweb_job_duration_seconds_bucket", (("le", "60.0"), *model))] == 2
    assert values[("segweb_job_duration_seconds_bucket", (("le", "+Inf"), *model))] == 2
    assert values[("segweb_job_inference_seconds_sum", model)] == pytest.approx(41.234)
    assert values[("segweb_uploads_refused_total", (("reason", "not_an_image"),))] == 1
    assert values[("segweb_webhook_attempts", (("outcome", "success"),))] == 0
    assert values[("segweb_webhook_deliveries", (("status", "failed"),))] == 0


def test_an_empty_installation_scrapes_cleanly(client, metrics_on):
    values = scrape(client)
    assert values[("segweb_queue_depth", ())] == 0
    assert values[("segweb_queue_oldest_age_seconds", ())] == 0
