"""Hostile input on every route, beyond what the schema describes: no answer is ever a 5xx.

The routes come from the URL resolver, so a new route is covered the day it is added. Each gets
every query parameter segweb (or the admin) reads, one at a time, set to values that broke
something once or could: Unicode digits (``str.isdigit`` accepts "²"), dates past
``datetime.max`` once in UTC, 100 KB strings, NUL bytes. Routes taking a body get the same values
in every field as JSON, urlencoded and multipart, plus a 5,000-deep JSON document, a body too big
and bodies that are not what they claim. API answers in the 4xx range must be JSON with a
``detail`` (what a client shows).

``test_schema_fuzz.py`` checks the API against its own schema; this checks what no schema says.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.throttling import ScopedRateThrottle

from segmentation import services
from segmentation.api.filters import JobFilter
from segmentation.models import Export
from tests.conftest import image_bytes
from tests.factories import create_job, succeed

HUGE = "x" * 100_000

#: Values that broke something once, or could.
HOSTILE = [
    "²",
    "⑤",
    "١٢",  # Arabic-Indic digits
    "-1",
    "0",
    "9" * 5000,  # past int()'s digit limit
    "1e309",
    "NaN",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+14:00",
    "99999-01-01T00:00:00",
    HUGE,
    "\x00",
    "a\x00b",
    "[]",
    "../../etc/passwd",
    "http://[::1",  # urlsplit raises on the unclosed bracket
    "<script>alert(1)</script>",
    "Émile\u202e",
]

#: Every query parameter a view reads: the job filters, pagination, and the views' own.
QUERY_NAMES = sorted(
    {*JobFilter.base_filters, "page", "page_size", "format", "download", "v", "script", "lang",
     "next"}
)  # fmt: skip
#: ...and the admin's (the admin is Django's own code: it gets the lighter sweep).
ADMIN_QUERY_NAMES = ["q", "o", "p", "e", "_changelist_filters", "all", "next"]

#: Values sent in each parameter on its own (all of them go in every parameter at once).
SHARP = ["²", "9" * 5000, "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", HUGE, "a\x00b"]

#: Every field a form or serializer reads (extra ones are ignored, so all are sent at once).
BODY_NAMES = [
    "username", "password", "password1", "password2", "email", "score_threshold", "model",
    "precision", "name", "format", "jobs", "filters", "url", "events", "image", "archive",
    "images", "query", "has", "status", "threshold", "action", "_selected_action", "reason",
]  # fmt: skip

#: The same values as JSON: wrong types for every field.
JSON_VALUES = [
    [],
    {},
    None,
    True,
    -1,
    2**70,
    1e308,
    "²",
    HUGE,
    "a\x00b",
    "9999-12-31T23:59:59-23:59",
    ["x"] * 1000,
    {"a": [1, {"b": None}]},
]

DEEP_ARRAY = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000


# --- The routes -----------------------------------------------------------------------------


def _patterns(resolvers=None, namespace=""):
    for entry in resolvers if resolvers is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _patterns(entry.url_patterns, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            yield f"{namespace}{entry.name}", _parameters(entry)


def _parameters(entry: URLPattern) -> list[str]:
    converters = getattr(entry.pattern, "converters", None)
    return list(converters) if converters else list(entry.pattern.regex.groupindex)


ROUTES = sorted(dict(_patterns()).items())


def test_every_named_route_is_fuzzed():
    """The resolver has routes (the list above is not silently empty), API and pages alike."""
    names = [name for name, _ in ROUTES]
    assert "api-job-list" in names and "job-list" in names and "admin:index" in names


@pytest.fixture
def unthrottled(monkeypatch):
    rates = dict.fromkeys(ScopedRateThrottle.THROTTLE_RATES)
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", rates)
    cache.clear()


@pytest.fixture(autouse=True)
def quiet(caplog):
    """Thousands of 4xx warnings would only slow the run; failures say what went wrong."""
    caplog.set_level("ERROR", logger="django.request")
    caplog.set_level("ERROR", logger="django.security")


@pytest.fixture
def objects(owner, staff, monkeypatch, settings):
    """One of everything alice can own, so that every route reaches its real code."""
    monkeypatch.setattr(services, "_publish_export", lambda export_id: None)
    settings.SEGWEB = {**settings.SEGWEB, "WEBHOOK_ALLOW_LOOPBACK": True}
    job = succeed(create_job(owner, small_photo()))
    collection = services.collection_create_from_photos(owner=owner, uploads=[small_photo()])
    export = services.export_create(owner=owner, format=Export.Format.COCO, job_ids=[job.pk])
    webhook = services.webhook_create(
        owner=owner, url="http://127.0.0.1:9/hook", events=["job.finished"]
    )
    return {
        "job": job.pk,
        "collection": collection.pk,
        "export": export.pk,
        "webhook": webhook.pk,
        "user": owner.pk,
    }


def small_photo() -> SimpleUploadedFile:
    return SimpleUploadedFile("photo.png", image_bytes(), content_type="image/png")


def _url(name: str, parameters: list[str], objects: dict, text: str = "photo") -> str:
    """The route with real ids (the object its name is about), ``text`` in its text parts."""
    kinds = ("collection", "export", "webhook", "job", "user")
    about = next((k for k in kinds if k in name), "job")
    values = {
        "pk": objects[about],
        "object_id": objects[about],
        "index": 0,
        "kind": text if text != "photo" or "instance" not in name else "cutout",
        "app_label": "segmentation",
        "content_type_id": 1,
        "uidb64": "MQ",
        "token": text,
        "url": text,
    }
    return reverse(name, kwargs={p: values.get(p, text) for p in parameters})


# --- The checks -----------------------------------------------------------------------------


#: API routes that answer documents (YAML, HTML), not the API's JSON: no 5xx is all they owe.
DOCUMENTS = ("/api/schema/", "/api/docs/")


def _problem(response, path: str) -> str | None:
    """What is wrong with the answer, if anything."""
    if response.status_code >= 500:
        exc = getattr(response, "exc_info", None)
        return f"{response.status_code} ({exc[1]!r})" if exc else str(response.status_code)
    api = path.startswith("/api/") and not path.startswith(DOCUMENTS)
    if api and 400 <= response.status_code < 500:
        if not response.get("Content-Type", "").startswith("application/json"):
            return f"{response.status_code} not JSON: {response.content[:100]!r}"
        detail = json.loads(response.content).get("detail")
        if not isinstance(detail, str) or not detail:
            return f"{response.status_code} without a detail: {response.content[:200]!r}"
    return None


class Sender:
    """Sends as a signed-in user (alice, or the superuser on admin routes); records problems."""

    def __init__(self, user) -> None:
        self.client = Client(raise_request_exception=False)
        self.user = user
        self.problems: list[str] = []

    def send(self, method: str, path: str, what: str, **kwargs) -> None:
        if "_auth_user_id" not in self.client.session:  # a sign-out route signed it out
            self.client.force_login(self.user)
        response = getattr(self.client, method)(path, **kwargs)
        problem = _problem(response, path)
        if problem:
            self.problems.append(f"{method.upper()} {path[:120]} {what}: {problem}")


def _short(value) -> str:
    return repr(value)[:40]


def _as_form(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# --- The tests ------------------------------------------------------------------------------


@pytest.mark.slow  # some 20,000 requests: a few minutes
@pytest.mark.django_db
@pytest.mark.parametrize(("name", "parameters"), ROUTES, ids=[name for name, _ in ROUTES])
def test_hostile_input_never_gets_a_5xx(name, parameters, objects, owner, staff, unthrottled):
    admin = name.startswith("admin:")
    sender = Sender(staff if admin else owner)
    path = _url(name, parameters, objects)
    is_api = path.startswith("/api/")

    names = ADMIN_QUERY_NAMES if admin else QUERY_NAMES
    for value in HOSTILE:
        sender.send(
            "get", path, f"every parameter {_short(value)}", data=dict.fromkeys(names, value)
        )
    if not admin:
        for key in names:
            for value in SHARP:
                sender.send("get", path, f"?{key}={_short(value)}", data={key: value})

    if {"kind", "token", "url"} & set(parameters):  # text in the path itself
        for value in ("\x00", HUGE[:2000], "²", "..", "%2e%2e"):
            sender.send("get", _url(name, parameters, objects, value), f"path {_short(value)}")

    methods = ("post", "put", "patch") if is_api else ("post",)
    for method in methods:
        _send_bodies(sender, method, path, json_bodies=is_api)
    if is_api:
        sender.send("delete", path, "DELETE with a deep body", data=DEEP_ARRAY,
                    content_type="application/json")  # fmt: skip

    assert not sender.problems, "\n".join(sender.problems[:30])


def _send_bodies(sender: Sender, method: str, path: str, *, json_bodies: bool) -> None:
    for value in HOSTILE:
        form = dict.fromkeys(BODY_NAMES, value)
        sender.send(method, path, f"multipart {_short(value)}", data=form)
        encoded = _urlencoded(form)
        content_type = "application/x-www-form-urlencoded"
        sender.send(method, path, f"urlencoded {_short(value)}", data=encoded,
                    content_type=content_type)  # fmt: skip
    if not json_bodies:
        return
    for value in JSON_VALUES:
        body = json.dumps(dict.fromkeys(BODY_NAMES, value))
        sender.send(method, path, f"JSON {_short(value)}", data=body,
                    content_type="application/json")  # fmt: skip
    for what, body, content_type in [
        ("deep JSON array", DEEP_ARRAY, "application/json"),
        ("deep JSON object", DEEP_OBJECT, "application/json"),
        ("2 MB of JSON", json.dumps({"name": "x" * 2_000_000}), "application/json"),
        ("JSON that is not", "{'name': ", "application/json"),
        ("JSON of NUL bytes", "\x00" * 100, "application/json"),
        ("a top-level JSON list", json.dumps(JSON_VALUES[:-2]), "application/json"),
        ("bytes that are not UTF-8", b"\xff\xfe\xfa", "application/json"),
        ("multipart without a boundary", b"--x\r\n", "multipart/form-data"),
        ("an unknown media type", "x", "application/x-evil"),
    ]:
        sender.send(method, path, what, data=body, content_type=content_type)


def _urlencoded(form: dict) -> str:
    from urllib.parse import urlencode

    return urlencode({k: _as_form(v) for k, v in form.items()})


def test_the_five_reported_500s_are_400s(owner, objects, unthrottled):
    """The review's five, named: each was a 500."""
    api = Client()
    api.force_login(owner)
    for query in (
        {"page_size": "²"},
        {"page_size": "⑤"},
        {"created_after": "9999-12-31T23:59:59-23:59"},
        {"created_before": "0001-01-01T00:00:00+14:00"},
    ):
        response = api.get("/api/jobs/", query)
        assert response.status_code == 400, (query, response.content)
        assert response.json()["detail"], query
        assert api.get("/jobs/", query).status_code in (200, 400)  # the history page's filters
    response = Client().post("/api/auth/token/", DEEP_ARRAY, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper" in response.json()["detail"]


def test_an_id_that_is_not_a_uuid_is_a_404(owner, unthrottled, db):
    api = Client()
    api.force_login(owner)
    response = api.get(f"/api/jobs/{uuid.uuid4()}x/")
    assert response.status_code == 404
    assert response.json()["detail"]
