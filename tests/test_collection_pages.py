"""The collection pages and the account page (webhooks), for the three personas."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from segmentation import services
from segmentation.models import Collection, Job, Webhook
from tests.conftest import photo_upload, stored_files
from tests.factories import fail
from tests.photos import CHELSEA, COFFEE

pytestmark = pytest.mark.django_db


@pytest.fixture
def collection(owner):
    return services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(COFFEE), photo_upload(CHELSEA)], name="Holiday <2026>"
    )


def assert_csp_friendly(html: str) -> None:
    """No inline script, event handler or style attribute: a strict CSP holds."""
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+=", html)
    assert not re.search(r"\sstyle=", html)


def test_anonymous_visitors_are_sent_to_sign_in(client, collection):
    for url in [reverse("collection-list"), reverse("collection-detail", args=[collection.pk]),
                reverse("account")]:  # fmt: skip
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_the_collection_page_shows_progress_and_the_jobs_as_a_grid(owner_client, collection):
    response = owner_client.get(reverse("collection-detail", args=[collection.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Holiday &lt;2026&gt;" in html
    assert 'id="collection-bar" max="2" value="0"' in html
    assert html.count('class="card job-card"') == 2
    assert f'data-api-url="/api/collections/{collection.pk}/"' in html
    assert "collection.js" in html
    assert_csp_friendly(html)


def test_rejected_files_are_listed_on_the_collection_page(owner_client, owner):
    from django.core.files.uploadedfile import SimpleUploadedFile

    collection = services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(), SimpleUploadedFile("<b>notes.txt", b"x")]
    )
    html = owner_client.get(reverse("collection-detail", args=[collection.pk])).content.decode()

    assert "1 file not made into jobs" in html
    assert "&lt;b&gt;notes.txt" in html
    assert "<b>notes" not in html


def test_the_list_shows_only_my_collections(owner_client, collection, other_user):
    services.collection_create_from_photos(
        owner=other_user, uploads=[photo_upload(), photo_upload()], name="Bob's"
    )
    html = owner_client.get(reverse("collection-list")).content.decode()
    assert "Holiday" in html
    assert "Bob&#x27;s" not in html
    assert_csp_friendly(html)


def test_another_users_collection_is_a_404_everywhere(client, other_user, collection):
    client.force_login(other_user)
    assert client.get(reverse("collection-detail", args=[collection.pk])).status_code == 404
    for name in ("collection-cancel", "collection-retry", "collection-delete"):
        assert client.post(reverse(name, args=[collection.pk])).status_code == 404, name
    assert Job.objects.filter(collection=collection, status="queued").count() == 2


def test_staff_can_open_anyones_collection(client, staff, collection):
    client.force_login(staff)
    assert client.get(reverse("collection-detail", args=[collection.pk])).status_code == 200


def test_cancel_and_retry_buttons(owner_client, collection):
    response = owner_client.post(reverse("collection-cancel", args=[collection.pk]), follow=True)
    assert "2 queued photo(s) cancelled." in response.content.decode()
    assert Job.objects.filter(collection=collection, status="failed").count() == 2

    response = owner_client.post(reverse("collection-retry", args=[collection.pk]), follow=True)
    assert "2 failed photo(s) queued again." in response.content.decode()
    assert Job.objects.filter(collection=collection, status="queued").count() == 2


def test_delete_asks_first_then_removes_everything(
    owner_client, collection, private_storage, django_capture_on_commit_callbacks
):
    url = reverse("collection-delete", args=[collection.pk])
    confirm = owner_client.get(url)
    assert "its 2 jobs" in confirm.content.decode()
    assert Collection.objects.filter(pk=collection.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(url)

    assert response.status_code == 302
    assert not Collection.objects.filter(pk=collection.pk).exists()
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_cancel_and_retry_are_offered_only_when_they_would_do_something(owner_client, collection):
    def shown(html: str, count: str) -> bool:
        form = re.search(rf'<form[^>]*data-shown-while="{count}"[^>]*>', html).group(0)
        return "hidden" not in form

    url = reverse("collection-detail", args=[collection.pk])
    html = owner_client.get(url).content.decode()
    assert shown(html, "queued") and not shown(html, "failed")
    first, second = collection.jobs.all()
    fail(first)
    fail(second)
    html = owner_client.get(url).content.decode()
    assert shown(html, "failed") and not shown(html, "queued")


# --- account: webhooks ----------------------------------------------------------------------


@pytest.fixture
def loopback_allowed(settings):
    settings.SEGWEB = {**settings.SEGWEB, "WEBHOOK_ALLOW_LOOPBACK": True}


def test_adding_a_webhook_shows_its_secret_once(owner_client, owner, loopback_allowed):
    response = owner_client.post(
        reverse("account"), {"url": "http://127.0.0.1:9/hook", "events": ["job.finished"]}
    )

    html = response.content.decode()
    webhook = Webhook.objects.get(owner=owner)
    assert response.status_code == 200
    assert webhook.secret in html
    assert webhook.events == ["job.finished"]
    assert webhook.secret not in owner_client.get(reverse("account")).content.decode()
    assert_csp_friendly(html)


def test_a_refused_url_is_explained_on_the_page(owner_client, owner):
    response = owner_client.post(
        reverse("account"), {"url": "http://169.254.169.254/", "events": ["job.finished"]}
    )
    assert response.status_code == 400
    assert "link-local address" in response.content.decode()
    assert not Webhook.objects.exists()


def test_only_the_owner_can_delete_a_webhook(client, owner, other_user, loopback_allowed):
    webhook = services.webhook_create(
        owner=owner, url="http://127.0.0.1:9/", events=["job.finished"]
    )
    client.force_login(other_user)
    assert client.post(reverse("webhook-delete", args=[webhook.pk])).status_code == 404
    assert "127.0.0.1:9" not in client.get(reverse("account")).content.decode()
    client.force_login(owner)
    assert client.post(reverse("webhook-delete", args=[webhook.pk])).status_code == 302
    assert not Webhook.objects.exists()
