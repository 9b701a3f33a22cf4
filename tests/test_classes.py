"""Per-job class counts and per-user summaries stay equal to what the detections say, through
every change of what a job shows: finishing, threshold, re-run, retry, hiding, deletion."""

from __future__ import annotations

import pytest

from segmentation import services
from segmentation.classes import label_bits
from segmentation.models import JobClass, UserClass
from tests.factories import create_job, fail, succeed

pytestmark = pytest.mark.django_db


def snapshot() -> tuple[set, set]:
    jobs = set(
        JobClass.objects.values_list(
            "job_id", "owner_id", "label", "count", "max_score", "visible", "created_at",
            "labels_low", "labels_high",
        )
    )  # fmt: skip
    users = set(UserClass.objects.filter(jobs__gt=0).values_list("owner_id", "label", "jobs"))
    return jobs, users


def assert_matches_a_rebuild() -> tuple[set, set]:
    kept = snapshot()
    services.class_counts_rebuild()
    assert snapshot() == kept
    return kept


def summary(user) -> dict[str, int]:
    return dict(UserClass.objects.filter(owner=user, jobs__gt=0).values_list("label", "jobs"))


def test_a_finished_job_counts_what_it_shows_at_its_threshold(owner):
    # succeed() gives scores 0.9, 0.8, 0.7, 0.6 at threshold 0.5 (kept down to 0.25)
    job = succeed(create_job(owner), labels=("dog", "dog", "person", "cat"))
    rows = {c.label: c for c in JobClass.objects.filter(job=job)}
    assert {k: (v.count, round(v.max_score, 2)) for k, v in rows.items()} == {
        "dog": (2, 0.9),
        "person": (1, 0.7),
        "cat": (1, 0.6),
    }
    assert {(c.labels_low, c.labels_high) for c in rows.values()} == {
        label_bits({"dog", "person", "cat"})
    }
    assert summary(owner) == {"dog": 1, "person": 1, "cat": 1}
    assert_matches_a_rebuild()


def test_a_threshold_change_moves_the_counts_both_ways(owner):
    job = succeed(create_job(owner), labels=("dog", "person", "cat"))
    services.job_set_threshold(job=job, threshold=0.75)
    assert summary(owner) == {"dog": 1, "person": 1}
    assert JobClass.objects.get(job=job, label="dog").count == 1
    services.job_set_threshold(job=job, threshold=0.95)
    assert summary(owner) == {}
    assert not JobClass.objects.filter(job=job).exists()
    services.job_set_threshold(job=job, threshold=0.3)
    assert summary(owner) == {"dog": 1, "person": 1, "cat": 1}
    assert_matches_a_rebuild()


def test_the_summary_counts_jobs_not_instances_and_users_apart(owner, other_user):
    succeed(create_job(owner), labels=("dog", "dog", "dog"))
    succeed(create_job(owner), labels=("dog", "cat"))
    succeed(create_job(other_user), labels=("dog",))
    assert summary(owner) == {"dog": 2, "cat": 1}
    assert summary(other_user) == {"dog": 1}
    assert_matches_a_rebuild()


def test_rerun_retry_and_failure_leave_nothing_counted_until_it_succeeds_again(owner):
    job = succeed(create_job(owner), labels=("dog",))
    services.job_rerun(job=job)
    assert summary(owner) == {}
    assert not JobClass.objects.filter(job=job).exists()
    fail(job)
    assert summary(owner) == {}
    services.job_retry(job=job)
    assert summary(owner) == {}
    succeed(job, labels=("cat",))
    assert summary(owner) == {"cat": 1}
    assert_matches_a_rebuild()


def test_hiding_takes_a_job_out_of_its_owners_summary_and_showing_puts_it_back(owner, staff):
    job = succeed(create_job(owner), labels=("dog", "cat"))
    succeed(create_job(owner), labels=("dog",))
    services.job_hide(job=job, by=staff, reason="spam")
    assert summary(owner) == {"dog": 1}
    assert set(JobClass.objects.filter(job=job).values_list("visible", flat=True)) == {False}
    services.job_hide(job=job, by=staff, reason="again")  # hiding twice counts once
    assert summary(owner) == {"dog": 1}
    services.job_unhide(job=job)
    assert summary(owner) == {"dog": 2, "cat": 1}
    assert_matches_a_rebuild()


def test_a_job_hidden_while_running_is_not_counted_when_it_finishes(owner, staff):
    job = create_job(owner)
    services.job_hide(job=job, by=staff, reason="spam")
    succeed(job, labels=("dog",))
    assert summary(owner) == {}
    assert JobClass.objects.filter(job=job, visible=False).count() == 1
    assert_matches_a_rebuild()


def test_deleting_a_job_removes_its_rows_and_its_share_of_the_summary(owner, staff):
    shown = succeed(create_job(owner), labels=("dog",))
    hidden = succeed(create_job(owner), labels=("dog",))
    services.job_hide(job=hidden, by=staff, reason="spam")
    services.job_delete(job=hidden)
    assert summary(owner) == {"dog": 1}
    services.job_delete(job=shown)
    assert summary(owner) == {}
    assert not JobClass.objects.exists()
    assert_matches_a_rebuild()


def test_a_user_deleted_takes_their_rows_along(owner):
    succeed(create_job(owner), labels=("dog",))
    owner.delete()
    assert not JobClass.objects.exists()
    assert not UserClass.objects.exists()


def test_the_migration_backfill_counts_jobs_made_before_it(owner):
    succeed(create_job(owner), labels=("dog", "cat"))
    JobClass.objects.all().delete()
    UserClass.objects.all().delete()
    services.class_counts_rebuild()
    assert summary(owner) == {"dog": 1, "cat": 1}
    assert JobClass.objects.count() == 2


def test_deleting_a_collection_takes_its_jobs_out_of_the_summary(owner):
    from tests.conftest import photo_upload

    collection = services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(), photo_upload()], score_threshold=0.5
    )
    for job in collection.jobs.all():
        succeed(job, labels=("dog",))
    succeed(create_job(owner), labels=("dog",))
    assert summary(owner) == {"dog": 3}
    services.collection_delete(collection=collection)
    assert summary(owner) == {"dog": 1}
    assert_matches_a_rebuild()
