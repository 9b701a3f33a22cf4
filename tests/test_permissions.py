"""Who may do what to a job: personas x every job route and admin action, as one table.

Model permissions decide, never ``is_staff`` alone: reading another user's job needs "view
job", hiding, showing again, re-running (and the owner's own retry and threshold on others'
jobs) "change job", deleting "delete job"; deactivating users "change user", and only a
superuser deactivates a superuser. A job one may not see is a 404 (as a random id); one that
one may see but not act on is a 403 that says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmentation import services
from segmentation.models import ACTION_PERMISSIONS, Job
from tests.conftest import image_bytes
from tests.factories import create_job, fail, succeed

pytestmark = pytest.mark.django_db

PERSONAS = ("owner", "other", "staff", "viewer", "moderator", "superuser")
#: Each persona: is_staff, is_superuser, the segmentation permissions it holds.
ROLES = {
    "owner": (False, False, ()),
    "other": (False, False, ()),
    "staff": (True, False, ()),  # staff without any permission: the admin's door, nothing more
    "viewer": (True, False, ("view_job",)),
    "moderator": (True, False, ("view_job", "change_job")),
    "superuser": (True, True, ()),
}


def make_user(django_user_model, name: str, staff: bool, superuser: bool, codenames=()):
    user = django_user_model.objects.create_user(
        name, f"{name}@example.com", is_staff=staff, is_superuser=superuser
    )
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # no stale permission cache


@pytest.fixture(autouse=True)
def fresh_rates():
    cache.clear()  # the retry routes count against the job rate
    yield
    cache.clear()


@pytest.fixture
def people(django_user_model) -> dict:
    return {persona: make_user(django_user_model, persona, *ROLES[persona]) for persona in PERSONAS}


@dataclass(frozen=True)
class Route:
    """One way to read or act on a job: how to call it, the job state it needs, and what it
    changes when it is allowed (``None``: it only reads)."""

    call: Callable
    state: str = "succeeded"
    effect: Callable[[Job], bool] | None = None


def get(url: str) -> Callable:
    return lambda client, job: client.get(url.format(pk=job.pk, collection=job.collection_id))


def post(url: str, data=None) -> Callable:
    return lambda client, job: client.post(
        url.format(pk=job.pk, collection=job.collection_id), data or {}
    )


def gone(job: Job) -> bool:
    return not Job.objects.filter(pk=job.pk).exists()


def queued(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).status == Job.Status.QUEUED


def threshold_changed(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).score_threshold == 0.8


def cancelled(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).status == Job.Status.FAILED


def patch_threshold(client, job):
    body = '{"score_threshold": 0.8}'
    return client.patch(f"/api/jobs/{job.pk}/", body, content_type="application/json")


ROUTES = {
    "page": Route(get("/jobs/{pk}/")),
    "status": Route(get("/jobs/{pk}/status/")),
    "image": Route(get("/jobs/{pk}/image/")),
    "overlay": Route(get("/jobs/{pk}/overlay/?download=1")),
    "thumbnail": Route(get("/jobs/{pk}/thumbnail/")),
    "coco.json": Route(get("/jobs/{pk}/coco.json")),
    "delete": Route(post("/jobs/{pk}/delete/"), effect=gone),
    "retry": Route(post("/jobs/{pk}/retry/"), state="failed", effect=queued),
    "api get": Route(get("/api/jobs/{pk}/")),
    "api coco": Route(get("/api/jobs/{pk}/coco/")),
    "api image": Route(get("/api/jobs/{pk}/image/")),
    "api mask": Route(get("/api/jobs/{pk}/instances/0/mask/")),
    "api cut-outs": Route(get("/api/jobs/{pk}/export/?format=cutouts")),
    "api delete": Route(lambda c, job: c.delete(f"/api/jobs/{job.pk}/"), effect=gone),
    "api retry": Route(post("/api/jobs/{pk}/retry/"), state="failed", effect=queued),
    "api threshold": Route(patch_threshold, effect=threshold_changed),
    # Collections are groups of jobs: the job permissions open them too.
    "collection page": Route(get("/collections/{collection}/"), state="collection"),
    "collection cancel": Route(
        post("/collections/{collection}/cancel/"), state="collection", effect=cancelled
    ),
    "collection delete": Route(
        post("/collections/{collection}/delete/"), state="collection", effect=gone
    ),
    "api collection": Route(get("/api/collections/{collection}/"), state="collection"),
    "api collection delete": Route(
        lambda c, job: c.delete(f"/api/collections/{job.collection_id}/"),
        state="collection",
        effect=gone,
    ),
}
#: Answers per persona, in the order of PERSONAS. Seeing (and downloading) needs "view job";
#: changing "change job"; deleting "delete job"; staff without permissions are nobody here.
SEE = (200, 404, 404, 200, 200, 200)
EXPECTED = {
    "page": SEE,
    "status": SEE,
    "image": SEE,
    "overlay": SEE,
    "thumbnail": SEE,
    "coco.json": SEE,
    "delete": (302, 404, 404, 403, 403, 302),
    "retry": (302, 404, 404, 403, 302, 302),
    "api get": SEE,
    "api coco": SEE,
    "api image": SEE,
    "api mask": SEE,
    "api cut-outs": SEE,
    "api delete": (204, 404, 404, 403, 403, 204),
    "api retry": (202, 404, 404, 403, 202, 202),
    "api threshold": (200, 404, 404, 403, 200, 200),
    "collection page": SEE,
    "collection cancel": (302, 404, 404, 403, 302, 302),
    "collection delete": (302, 404, 404, 403, 403, 302),
    "api collection": SEE,
    "api collection delete": (204, 404, 404, 403, 403, 204),
}
ALLOWED = {200, 202, 204, 302}


def small_job(owner) -> Job:
    """A job from a small photo: the matrix makes one per case, and only permissions matter."""
    return create_job(owner, SimpleUploadedFile("coffee.png", image_bytes((96, 64))))


def job_in(state: str, owner) -> Job:
    """A job of ``owner``: failed, succeeded, or queued as the one photo of a collection."""
    if state == "collection":
        photo = SimpleUploadedFile("coffee.png", image_bytes((96, 64)))
        collection = services.collection_create_from_photos(owner=owner, uploads=[photo])
        return collection.jobs.get()
    job = small_job(owner)
    return fail(job) if state == "failed" else succeed(job)


def matrix(table: dict) -> list:
    return [
        pytest.param(route, persona, codes[i], id=f"{route}-{persona}")
        for route, codes in table.items()
        for i, persona in enumerate(PERSONAS)
    ]


@pytest.mark.parametrize(("route", "persona", "expected"), matrix(EXPECTED))
def test_job_routes(client, people, route, persona, expected):
    spec = ROUTES[route]
    job = job_in(spec.state, people["owner"])
    client.force_login(people[persona])
    response = spec.call(client, job)
    assert response.status_code == expected
    if expected == 403:
        assert b"not" in response.content  # it says what may not be done
    if spec.effect is not None:
        assert spec.effect(job) == (expected in ALLOWED)


# --- A hidden job: its owner sees that, when and why, may delete it, and nothing else -------

HIDDEN = {
    "page": (200, 200),
    "status": (200, 200),
    "image": (403, 200),
    "overlay": (403, 200),
    "thumbnail": (403, 200),
    "coco.json": (403, 200),
    "retry": (403, 302),
    "api get": (200, 200),
    "api coco": (403, 200),
    "api image": (403, 200),
    "api mask": (403, 200),
    "api cut-outs": (403, 200),
    "api retry": (403, 202),
    "api threshold": (403, 200),
    "delete": (302, 302),
    "api delete": (204, 204),
}


@pytest.mark.parametrize(
    ("route", "persona", "expected"),
    [
        pytest.param(route, persona, codes[i], id=f"hidden-{route}-{persona}")
        for route, codes in HIDDEN.items()
        for i, persona in enumerate(("owner", "superuser"))
    ],
)
def test_hidden_job_routes(client, people, route, persona, expected):
    spec = ROUTES[route]
    job = job_in(spec.state, people["owner"])
    services.job_hide(job=job, by=people["moderator"], reason="a copyrighted picture")
    client.force_login(people[persona])
    response = spec.call(client, job)
    assert response.status_code == expected
    if expected == 403:  # the owner is told why, and that deleting is still theirs
        assert b"a copyrighted picture" in response.content
        assert b"delete" in response.content
    if spec.effect is not None:
        assert spec.effect(job) == (expected in ALLOWED)


def test_hidden_jobs_stay_in_the_owners_history_marked(client, people):
    job = succeed(small_job(people["owner"]))
    services.job_hide(job=job, by=people["moderator"], reason="a copyrighted picture")
    client.force_login(people["owner"])
    html = client.get(reverse("job-list")).content.decode()
    assert job.original_filename in html and "a copyrighted picture" in html
    listed = client.get("/api/jobs/").json()["results"]
    assert [(j["id"], j["hidden"], j["hidden_reason"]) for j in listed] == [
        (str(job.pk), True, "a copyrighted picture")
    ]
    assert listed[0]["hidden_at"] is not None


# --- The admin ------------------------------------------------------------------------------

CHANGELIST = reverse("admin:segmentation_job_changelist")


def act(client, action: str, job: Job, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(job.pk)], **extra}
    return client.post(CHANGELIST, data)


def hidden(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).hidden


def shown_again(job: Job) -> bool:
    return not Job.objects.get(pk=job.pk).hidden


def rerun(client, job):
    return act(client, "rerun_jobs", job)


ADMIN_ACTIONS = {
    # action: (call, whether the job starts hidden, effect)
    "hide": (lambda c, job: act(c, "hide_jobs", job, apply="1", reason="spam"), False, hidden),
    "show again": (lambda c, job: act(c, "unhide_jobs", job), True, shown_again),
    "run again": (rerun, False, queued),
    "delete": (lambda c, job: act(c, "delete_jobs", job), False, gone),
}
#: Whether the action happens, per persona: hide, show and re-run need "change job", delete
#: needs "delete job" (the moderator here has none), and non-staff never reach the admin.
ADMIN_EXPECTED = {
    "hide": (False, False, False, False, True, True),
    "show again": (False, False, False, False, True, True),
    "run again": (False, False, False, False, True, True),
    "delete": (False, False, False, False, False, True),
}


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        pytest.param(p, c, id=p)
        for p, c in zip(PERSONAS, (302, 302, 403, 200, 200, 200), strict=True)
    ],
)
def test_admin_job_list(client, people, persona, expected):
    succeed(small_job(people["owner"]))
    client.force_login(people[persona])
    response = client.get(CHANGELIST)
    assert response.status_code == expected
    if expected == 200:
        assert b"coffee.png" in response.content


@pytest.mark.parametrize(("action", "persona", "expected"), matrix(ADMIN_EXPECTED))
def test_admin_actions(client, people, action, persona, expected, monkeypatch):
    monkeypatch.setattr("segmentation.services._publish", lambda job_id: None)
    call, starts_hidden, effect = ADMIN_ACTIONS[action]
    job = succeed(small_job(people["owner"]))
    if starts_hidden:
        services.job_hide(job=job, by=people["superuser"], reason="spam")
    client.force_login(people[persona])
    call(client, job)
    assert effect(job) == expected


def test_the_admin_offers_only_the_actions_one_may_take(client, people):
    succeed(small_job(people["owner"]))
    client.force_login(people["viewer"])
    html = client.get(CHANGELIST).content.decode()
    for action in ("hide_jobs", "unhide_jobs", "rerun_jobs", "delete_jobs"):
        assert f'value="{action}"' not in html
    client.force_login(people["moderator"])
    html = client.get(CHANGELIST).content.decode()
    assert 'value="hide_jobs"' in html and 'value="delete_jobs"' not in html


# --- Deactivating users ---------------------------------------------------------------------

USERS = reverse("admin:auth_user_changelist")
ACTORS = {
    "staff": (True, False, ()),
    "user viewer": (True, False, ("view_user",)),
    "user changer": (True, False, ("view_user", "change_user")),
    "superuser": (True, True, ()),
}
#: Whether (an ordinary user, a superuser) ends up deactivated.
DEACTIVATED = {
    "staff": (False, False),
    "user viewer": (False, False),
    "user changer": (True, False),  # skipped, with a message: only a superuser may
    "superuser": (True, True),
}


@pytest.mark.parametrize(
    ("actor", "expected"), [pytest.param(a, e, id=a) for a, e in DEACTIVATED.items()]
)
def test_deactivate(client, django_user_model, actor, expected):
    acting = make_user(django_user_model, "actor", *ACTORS[actor])
    plain = make_user(django_user_model, "plain", False, False)
    root = make_user(django_user_model, "root", True, True)
    client.force_login(acting)
    data = {"action": "deactivate_users", ACTION_CHECKBOX_NAME: [plain.pk, root.pk]}
    response = client.post(USERS, data, follow=True)
    plain.refresh_from_db()
    root.refresh_from_db()
    assert (not plain.is_active, not root.is_active) == expected
    if actor == "user changer":
        assert b"only a superuser may deactivate them" in response.content


def user_form(user, **changes) -> dict:
    """The admin's user change form as it would be posted, with ``changes``."""
    data = {
        "username": user.username, "email": user.email, "is_active": "on",
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
    }  # fmt: skip
    if user.is_staff:
        data["is_staff"] = "on"
    if user.is_superuser:
        data["is_superuser"] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_change_user_cannot_touch_a_superuser_nor_grant_powers(client, django_user_model):
    changer = make_user(django_user_model, "changer", *ACTORS["user changer"])
    root = make_user(django_user_model, "root", True, True)
    client.force_login(changer)

    # A superuser's change form is read-only to them, their password form refused.
    page = reverse("admin:auth_user_change", args=[root.pk])
    client.post(page, user_form(root, is_active=None))
    password_url = reverse("admin:auth_user_password_change", args=[root.pk])
    new = "a takeover passphrase 123"
    answer = client.post(
        password_url, {"password1": new, "password2": new, "usable_password": "true"}
    )
    root.refresh_from_db()
    assert root.is_active and not root.check_password(new)
    assert answer.status_code == 403

    # Their own form cannot make them staff with more powers, let alone a superuser.
    mine = reverse("admin:auth_user_change", args=[changer.pk])
    client.post(mine, user_form(changer, is_superuser="on"))
    changer.refresh_from_db()
    assert not changer.is_superuser


# --- The rule itself ------------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(ACTION_PERMISSIONS))
@pytest.mark.parametrize("is_hidden", [False, True], ids=["visible", "hidden"])
def test_the_query_and_the_per_job_check_agree(people, action, is_hidden):
    job = succeed(small_job(people["owner"]))
    if is_hidden:
        services.job_hide(job=job, by=people["superuser"], reason="spam")
        job.refresh_from_db()
    for persona, user in people.items():
        in_scope = Job.objects.for_user(user, action).filter(pk=job.pk).exists()
        assert in_scope == job.allows(user, action), persona
