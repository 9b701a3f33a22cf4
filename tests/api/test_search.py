"""Search by content: has=LABEL[:N], min_score, with the other filters, for the owner only."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from segmentation import search, services
from segmentation.inference.coco import COCO_LABELS
from tests.factories import create_job, fail, succeed

pytestmark = pytest.mark.django_db


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def history(owner, other_user):
    """Scores go 0.9, 0.8, 0.7... in order; the threshold is 0.5."""
    return {
        "two people and a dog": succeed(create_job(owner), labels=("person", "dog", "person")),
        "one person": succeed(create_job(owner), labels=("person",)),
        "a dog": succeed(create_job(owner), labels=("dog",)),
        "a traffic light": succeed(create_job(owner), labels=("traffic light", "traffic light")),
        "failed": fail(create_job(owner)),
        "bob's dog": succeed(create_job(other_user), labels=("dog", "person", "person")),
    }


def found(client, query: str) -> set:
    response = client.get(f"/api/jobs/?{query}")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["count"] == len(body["results"])
    return {job["id"] for job in body["results"]}


def ids(history, *names) -> set:
    return {str(history[name].pk) for name in names}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("has=dog", ["two people and a dog", "a dog"]),
        ("has=person:2", ["two people and a dog"]),
        ("has=person", ["two people and a dog", "one person"]),
        ("has=person:2&has=dog", ["two people and a dog"]),
        ("has=person:2+dog", ["two people and a dog"]),
        ("has=person,dog", ["two people and a dog"]),
        ("has=person:3", []),
        ("has=cat", []),
        ("has=traffic_light:2", ["a traffic light"]),
        ("has=traffic+light:2", ["a traffic light"]),
        ("has=Traffic_Light", ["a traffic light"]),
        ("label=dog", ["two people and a dog", "a dog"]),
        ("label=dog&has=person", ["two people and a dog"]),
        ("has=dog&min_score=0.85", ["a dog"]),
        ("has=person:2&min_score=0.7", ["two people and a dog"]),
        ("has=person:2&min_score=0.75", []),
        ("has=dog&has=person&min_score=0.85", []),
        ("has=dog&status=succeeded", ["two people and a dog", "a dog"]),
        ("has=dog&status=failed", []),
        ("has=dog&model=yolov7_seg", ["two people and a dog", "a dog"]),
        ("has=dog&model=other", []),
        ("has=dog&created_after=2000-01-01T00:00:00Z", ["two people and a dog", "a dog"]),
        ("has=dog&created_before=2000-01-01T00:00:00Z", []),
    ],
)
def test_has_finds_the_owners_jobs_showing_every_condition(owner, history, query, expected):
    assert found(api(owner), query) == ids(history, *expected)


def test_has_composes_with_the_id_filter_and_keeps_newest_first(owner, history):
    wanted = ids(history, "a dog", "two people and a dog", "one person")
    response = api(owner).get(f"/api/jobs/?has=dog&id={','.join(wanted)}")
    listed = [job["id"] for job in response.json()["results"]]
    assert listed == [str(history["a dog"].pk), str(history["two people and a dog"].pk)]


def test_counts_follow_the_jobs_current_threshold(owner, history):
    client = api(owner)
    services.job_set_threshold(job=history["two people and a dog"], threshold=0.75)
    assert found(client, "has=person:2") == set()  # person 0.9 and 0.7: one left
    services.job_set_threshold(job=history["two people and a dog"], threshold=0.3)
    assert found(client, "has=person:2") == ids(history, "two people and a dog")


def test_hidden_jobs_never_match_a_search(owner, staff, history):
    services.job_hide(job=history["a dog"], by=staff, reason="spam")
    assert found(api(owner), "has=dog") == ids(history, "two people and a dog")


def test_a_search_pages_and_counts(owner):
    made = [succeed(create_job(owner), labels=("dog",)) for _ in range(5)]
    response = api(owner).get("/api/jobs/?has=dog&page_size=2&page=3")
    body = response.json()
    assert body["count"] == 5
    assert [job["id"] for job in body["results"]] == [str(made[0].pk)]


def test_another_user_never_finds_the_owners_jobs(other_user, history):
    assert found(api(other_user), "has=person:2") == ids(history, "bob's dog")
    assert found(api(other_user), "has=traffic_light") == set()


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("has=unicorn", "'unicorn' is not a class"),
        ("has=person:0", "from 1 to 1000"),
        ("has=person:1001", "from 1 to 1000"),
        ("has=person:99999999999999999999999", "whole number"),
        ("has=person:%D9%A3", "whole number"),  # an Arabic-Indic three
        ("has=person:%C2%B3", "whole number"),  # a superscript three
        ("has=person:-1", "whole number"),
        ("has=person:2:3", "is not a class"),
        ("has=" + "+".join(label.replace(" ", "_") for label in COCO_LABELS[:11]), "At most 10"),
        ("&".join(["has=dog"] * 11), "At most 10"),
        ("has=" + "x" * 501, "longer than 500"),
        ("has=person%00", "is not a class"),
        ("has=dog&min_score=2", "min_score"),
        ("has=dog&min_score=1e-3", "min_score"),
        ("has=dog&min_score=nan", "min_score"),
        ("has=dog&min_score=%D9%A0.5", "min_score"),
        ("has=dog&min_score=", "min_score"),
        ("min_score=0.5", "min_score applies to has or label"),
    ],
)
def test_a_malformed_search_is_a_400_naming_it(owner, history, query, says):
    response = api(owner).get(f"/api/jobs/?{query}")
    assert response.status_code == 400
    assert says in response.json()["detail"]


def test_conditions_read_back_from_their_text():
    conditions = search.parse_conditions(["person:2 dog", "traffic light:3", "dog:2"])
    assert conditions == [
        search.Condition("person", 2),
        search.Condition("dog", 2),
        search.Condition("traffic light", 3),
    ]
    text = search.format_conditions(conditions)
    assert text == "person:2 dog:2 traffic_light:3"
    assert search.parse_conditions([text]) == conditions


def test_a_collection_is_searched_and_exported_by_content(owner, monkeypatch):
    from tests.conftest import photo_upload

    collection = services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(), photo_upload()], score_threshold=0.5
    )
    dog, cat = collection.jobs.order_by("created_at")
    succeed(dog, labels=("dog",))
    succeed(cat, labels=("cat",))
    succeed(create_job(owner), labels=("dog",))  # not in the collection
    assert found(api(owner), f"collection={collection.pk}&has=dog") == {str(dog.pk)}
    monkeypatch.setattr(services, "_publish_export", lambda export_id: None)
    response = api(owner).post(
        "/api/exports/",
        {"format": "coco", "filters": {"collection": str(collection.pk), "has": ["dog"]}},
        format="json",
    )
    assert response.status_code == 202
    assert api(owner).get(response.json()["url"]).json()["progress"]["total"] == 1
