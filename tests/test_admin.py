"""Moderation in the admin: lists, filters, and actions that go through the services."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from segmentation.models import Job
from tests.conftest import stored_files
from tests.factories import create_job, succeed

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:segmentation_job_changelist")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def jobs(owner, other_user):
    return [succeed(create_job(owner), labels=("cat",)), succeed(create_job(other_user))]


def act(client, action, jobs, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(j.pk) for j in jobs], **extra}
    return client.post(CHANGELIST, data, follow=True)


def test_changelist_shows_everyones_jobs_with_thumbnails_and_classes(staff_client, jobs):
    html = staff_client.get(CHANGELIST).content.decode()
    assert "alice" in html
    assert "bob" in html
    assert reverse("job-file", args=[jobs[0].pk, "thumbnail"]) in html
    assert "cup, spoon" in html


@pytest.mark.parametrize(
    "query",
    [
        {"status__exact": "succeeded"},
        {"model__exact": "yolov7_seg"},
        {"label": "cat"},
        {"hidden__exact": "0"},
        {"q": "alice"},
        {"q": "coffee"},
    ],
)
def test_filters_and_search_work(staff_client, jobs, query):
    response = staff_client.get(CHANGELIST, query)
    assert response.status_code == 200
    assert str(jobs[0].pk) in response.content.decode()


def test_class_filter_excludes_other_classes(staff_client, jobs):
    html = staff_client.get(CHANGELIST, {"label": "cat"}).content.decode()
    assert str(jobs[1].pk) not in html


def test_job_page_shows_read_only_detections(staff_client, jobs):
    html = staff_client.get(reverse("admin:segmentation_job_change", args=[jobs[0].pk])).content
    assert b"cat" in html
    assert b'name="detections-0-label"' not in html  # read-only, not an input


def test_hide_asks_for_a_reason_then_hides(staff_client, jobs, owner, staff):
    form = act(staff_client, "hide_jobs", jobs[:1])
    assert b"reason" in form.content
    assert not Job.objects.get(pk=jobs[0].pk).hidden
    act(staff_client, "hide_jobs", jobs[:1], apply="1", reason="copyrighted picture")
    job = Job.objects.get(pk=jobs[0].pk)
    assert job.hidden
    assert job.hidden_reason == "copyrighted picture"
    assert job.hidden_by == staff
    assert not Job.objects.for_user(owner, "download").exists()
    assert Job.objects.for_user(owner).exists()  # still in their history, marked hidden


def test_unhide(staff_client, jobs, staff):
    from segmentation import services

    services.job_hide(job=jobs[0], by=staff, reason="x")
    act(staff_client, "unhide_jobs", jobs[:1])
    assert not Job.objects.get(pk=jobs[0].pk).hidden


def test_rerun_queues_finished_jobs_again(staff_client, jobs, monkeypatch):
    monkeypatch.setattr("segmentation.services._publish", lambda job_id: None)
    act(staff_client, "rerun_jobs", jobs)
    assert set(Job.objects.values_list("status", flat=True)) == {"queued"}


def test_delete_action_removes_files_too(
    staff_client, jobs, private_storage, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        act(staff_client, "delete_jobs", jobs)
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_djangos_bulk_delete_is_not_offered(staff_client, jobs):
    assert b'value="delete_selected"' not in staff_client.get(CHANGELIST).content


def test_staff_can_deactivate_users(staff_client, owner):
    url = reverse("admin:auth_user_changelist")
    staff_client.post(url, {"action": "deactivate_users", ACTION_CHECKBOX_NAME: [owner.pk]})
    owner.refresh_from_db()
    assert not owner.is_active


def test_non_staff_cannot_reach_the_admin(owner_client):
    assert owner_client.get(CHANGELIST).status_code == 302
