"""Response headers that protect users: the CSP (and pages that keep to it), private caching,
safe download names, and JSON for a refused request that asked for JSON."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory

from segmentation import services
from segmentation.inference import ModelUnavailableError
from segmentation.models import Job
from segmentation.views import bad_request, csrf_failure, forbidden, server_error
from tests.conftest import PASSWORD, image_bytes
from tests.factories import create_job, fail, succeed

pytestmark = pytest.mark.django_db


# --- Content-Security-Policy ------------------------------------------------------------------


class InlineCode(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts, on*= handlers,
    style attributes and <style> blocks, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name == "style":
                self.found.append(f"<{tag} style={value!r}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "style":
            self.found.append("<style> block")
        # Data (json_script) is not code: the CSP does not apply to it.
        data = attributes.get("type") in ("application/json", "application/ld+json")
        self._in_script = tag == "script" and "src" not in attributes and not data

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append(f"inline <script>: {data.strip()[:60]!r}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


def assert_strict_csp(response) -> None:
    policy = response["Content-Security-Policy"]
    directives = {}
    for part in policy.split(";"):
        name, _, sources = part.strip().partition(" ")
        directives[name] = sources
    assert "'self'" in directives["script-src"]
    assert "'self'" in directives["style-src"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"


@pytest.fixture
def job(owner):
    return succeed(create_job(owner))


def _pages(job, collection_pk) -> list[str]:
    return [
        "/upload/",
        "/jobs/",
        "/jobs/?has=cup",
        f"/jobs/{job.pk}/",
        "/collections/",
        f"/collections/{collection_pk}/",
        f"/collections/{collection_pk}/delete/",
        "/exports/",
        "/account/",
        "/no-such-page/",
    ]


def _collection(owner):
    photo = SimpleUploadedFile("a.png", image_bytes(), content_type="image/png")
    return services.collection_create_from_photos(owner=owner, uploads=[photo]).pk


def test_every_page_has_the_csp_and_no_inline_code(owner, staff, job):
    failed = fail(create_job(owner))  # the failed-job page has its own buttons
    queued = create_job(owner)
    signed_in = Client()
    signed_in.force_login(owner)
    admin = Client()
    admin.force_login(staff)
    pages = [
        (signed_in, path)
        for path in [
            *_pages(job, _collection(owner)),
            f"/jobs/{failed.pk}/",
            f"/jobs/{queued.pk}/",
        ]
    ]
    pages += [(Client(), "/accounts/login/"), (Client(), "/signup/"), (Client(), "/admin/login/")]
    pages += [
        (admin, "/admin/"),
        (admin, "/admin/segmentation/job/"),
        (admin, f"/admin/segmentation/job/{job.pk}/change/"),
        (admin, "/admin/auth/user/"),
        (signed_in, "/api/docs/"),
    ]
    for client, path in pages:
        response = client.get(path)
        assert response.status_code in (200, 404), (path, response.status_code)
        assert_strict_csp(response)
        assert inline_code(response.content.decode()) == [], path


def test_the_job_status_fragment_has_no_inline_code(owner_client, owner):
    """The job page swaps this fragment in while a job runs: it must keep to the CSP too."""
    queued = create_job(owner)
    body = owner_client.get(f"/jobs/{queued.pk}/status/").json()["html"]
    assert inline_code(body) == []


def test_the_api_docs_load_their_start_up_script_from_a_url(owner_client):
    page = owner_client.get("/api/docs/")
    assert b"?script=" in page.content
    script = owner_client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")


@pytest.mark.parametrize("handler", [server_error, bad_request, forbidden, csrf_failure])
def test_the_error_pages_keep_to_the_csp(handler):
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    response = handler(request)
    assert response.status_code in (400, 403, 500)
    assert inline_code(response.content.decode()) == []


def test_a_failed_csrf_check_is_segwebs_page_under_the_csp(db):
    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/accounts/login/", {"username": "a", "password": "b"})
    assert response.status_code == 403
    assert b"reload the page" in response.content
    assert_strict_csp(response)
    assert inline_code(response.content.decode()) == []


# --- Caching ---------------------------------------------------------------------------------


def test_pages_for_a_signed_in_user_are_private_and_vary_on_cookie(owner_client):
    response = owner_client.get("/jobs/")
    assert "private" in response["Cache-Control"]
    vary = {v.strip() for v in response["Vary"].split(",")}
    assert {"Cookie", "Authorization"} <= vary


def test_api_answers_to_a_token_are_private_and_vary_on_authorization(client, owner):
    answer = client.post(
        "/api/auth/token/",
        {"username": "alice", "password": PASSWORD},
        content_type="application/json",
    )
    assert "private" in answer["Cache-Control"]  # asked anonymously, and it holds a token
    token = answer.json()["token"]
    response = Client().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert "private" in response["Cache-Control"]
    assert "Authorization" in response["Vary"]


def test_a_file_keeps_its_own_cache_control_and_gets_the_vary(owner_client, job):
    response = owner_client.get(f"/jobs/{job.pk}/image/")
    assert response["Cache-Control"] == "private, max-age=3600"  # set by the view: kept
    assert "Cookie" in response["Vary"]


def test_a_download_made_in_the_request_is_private(owner_client, job):
    response = owner_client.get(f"/jobs/{job.pk}/coco.json")
    assert "private" in response["Cache-Control"]


def test_answers_to_anonymous_requests_are_left_alone(client):
    response = client.get("/healthz")
    assert not response.has_header("Cache-Control")
    assert "Authorization" not in response.get("Vary", "")


# --- Download names --------------------------------------------------------------------------

EVIL = "x\"; filename*=UTF-8''evil.html; a=\".png"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (EVIL, 'attachment; filename="x\\"; filename*=UTF-8\'\'evil.html; a=\\"-coco.json"'),
        ("Café ☕.png", "attachment; filename*=utf-8''Caf%C3%A9%20%E2%98%95-coco.json"),
    ],
)
def test_a_hostile_or_non_ascii_name_gives_a_safe_download_header(
    owner_client, owner, name, expected
):
    photo = SimpleUploadedFile(name, image_bytes(), content_type="image/png")
    job = succeed(create_job(owner, photo))
    assert job.original_filename == name
    response = owner_client.get(f"/jobs/{job.pk}/coco.json")
    assert response["Content-Disposition"] == expected


def test_a_hostile_name_stays_one_parameter_on_the_photo_download(owner_client, owner):
    photo = SimpleUploadedFile(EVIL, image_bytes(), content_type="image/png")
    job = create_job(owner, photo)
    disposition = owner_client.get(f"/jobs/{job.pk}/image/?download=1")["Content-Disposition"]
    assert disposition.startswith('attachment; filename="x\\"; filename*=')
    assert disposition.count("filename*=") == 1  # only inside the quoted (escaped) value


# --- Too many files --------------------------------------------------------------------------


def _photos(count: int) -> list:
    return [SimpleUploadedFile(f"p{i}.png", image_bytes(), "image/png") for i in range(count)]


@pytest.mark.parametrize("path", ["/api/jobs/", "/api/collections/"])
def test_too_many_files_on_the_api_is_a_json_400(owner_client, settings, path):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    response = owner_client.post(path, {"images": _photos(3), "image": _photos(1)})
    assert response.status_code == 400
    assert response.json() == {"detail": "At most 2 files in one request; send a ZIP for more."}
    assert Job.objects.count() == 0


def test_too_many_files_on_the_upload_page_asking_for_json_is_a_json_400(owner_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    response = owner_client.post("/upload/", {"images": _photos(3)}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert "At most 2 files" in response.json()["detail"]


def test_too_many_files_on_the_upload_page_is_a_page_saying_why(owner_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    response = owner_client.post("/upload/", {"images": _photos(3)})
    assert response.status_code == 400
    assert b"At most 2 files in one request" in response.content
    assert response["Content-Type"].startswith("text/html")


# --- Errors never show server paths ------------------------------------------------------------

PATH_ERROR = "No such file: /srv/segweb/var/media/uploads/1/5f0c.png"


def test_a_failed_jobs_error_names_no_server_path(owner_client, owner):
    job = fail(create_job(owner), message=PATH_ERROR)
    assert job.error == "No such file: 5f0c.png"
    api = owner_client.get(f"/api/jobs/{job.pk}/").json()
    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "/srv/" not in str(api) and "/srv/" not in page


def test_the_model_list_names_no_server_path(owner_client, db):
    error = ModelUnavailableError("Checkpoint /opt/segweb/weights/yolov7-seg.pt not found.")
    services.model_report_record(model="yolov7_seg", error=error)
    models = owner_client.get("/api/models/").json()
    reason = next(m["reason"] for m in models if m["name"] == "yolov7_seg")
    assert reason == "Checkpoint yolov7-seg.pt not found."
