"""The history page's search, class facets and export button; the exports page."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from segmentation import services
from segmentation.models import Export
from tests.factories import create_job, succeed

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(owner, other_user):
    return {
        "people and a dog": succeed(create_job(owner), labels=("person", "dog", "person")),
        "a dog": succeed(create_job(owner), labels=("dog",)),
        "a person": succeed(create_job(owner), labels=("person",)),
        "bob's cat": succeed(create_job(other_user), labels=("cat",)),
    }


def listed(html: str) -> set[str]:
    return set(re.findall(r'data-job="([0-9a-f-]+)"', html))


def test_the_search_field_finds_by_content_and_keeps_the_query(owner_client, history):
    response = owner_client.get(reverse("job-list"), {"has": "person:2 dog", "status": ""})
    html = response.content.decode()
    assert listed(html) == {str(history["people and a dog"].pk)}
    assert 'name="has" id="search-has" value="person:2 dog"' in html


def test_facets_count_jobs_per_class_and_toggle_the_class_in_the_search(owner_client, history):
    html = owner_client.get(reverse("job-list"), {"has": "dog"}).content.decode()
    facets = dict(re.findall(r'aria-label="(\w+): (\d+) jobs?', html))
    assert facets == {"dog": "2", "person": "2"}  # bob's cat is not counted
    assert 'href="?has=dog+person"' in html  # adds person to the search
    assert re.search(r'class="facet active" href="\?"[^>]*aria-current="true"', html)


def test_a_malformed_search_is_a_400_page_saying_why(owner_client, history):
    response = owner_client.get(reverse("job-list"), {"has": "person:٣"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "the count after &#x27;:&#x27; must be a whole number" in html
    assert listed(html) == set()


def test_the_export_button_exports_what_the_page_shows(owner_client, owner, history, monkeypatch):
    monkeypatch.setattr(services, "_publish_export", lambda export_id: None)
    html = owner_client.get(reverse("job-list"), {"has": "dog"}).content.decode()
    assert "Export these 2 jobs" in html
    assert '<script id="export-filters" type="application/json">{"has": ["dog"]}</script>' in html
    response = owner_client.post(
        reverse("export-create"), {"has": "dog", "format": "coco_polygons"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("export-list")
    export = Export.objects.get()
    assert (export.owner, export.format, export.total) == (owner, "coco_polygons", 2)
    page = owner_client.get(reverse("export-list")).content.decode()
    assert "COCO, masks as polygons" in page and "0 / 2" in page


def test_the_exports_page_shows_only_ones_own(client, other_user, owner, history, monkeypatch):
    monkeypatch.setattr(services, "_publish_export", lambda export_id: None)
    services.export_create(owner=owner, format="coco", filters={})
    client.force_login(other_user)
    assert "No exports yet" in client.get(reverse("export-list")).content.decode()


def test_the_pages_need_no_inline_script_or_style(owner_client, history):
    for url in (reverse("job-list") + "?has=dog", reverse("export-list")):
        html = owner_client.get(url).content.decode()
        assert " style=" not in html and " onclick=" not in html and " onsubmit=" not in html
        for tag in re.findall(r"<script[^>]*>", html):
            assert " src=" in tag or 'type="application/json"' in tag
