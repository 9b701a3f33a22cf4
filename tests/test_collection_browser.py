"""A real browser watches a collection's page fill in by itself, at desktop and phone widths."""

from __future__ import annotations

import io
import zipfile

import pytest
import requests

from tests.live import PASSWORD, running_segweb
from tests.photos import CHELSEA, COFFEE
from tests.test_browser import OUTPUT, browser  # noqa: F401 - the Chromium fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segweb(tmp_path_factory):
    with running_segweb(tmp_path_factory.mktemp("segweb-collection-browser")) as base:
        yield base


def test_the_collection_page_shows_progress_live_and_fits_a_phone(browser, segweb):  # noqa: F811
    api = requests.Session()
    token = api.post(f"{segweb}/api/auth/token/",
                     data={"username": "alice", "password": PASSWORD}).json()["token"]  # fmt: skip
    api.headers["Authorization"] = f"Token {token}"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.write(COFFEE, "coffee.png")
        z.write(CHELSEA, "chelsea.png")
        z.writestr("notes.txt", "not a photo")
    created = api.post(f"{segweb}/api/collections/",
                       files={"archive": ("holiday.zip", archive.getvalue())},
                       data={"model": "yolov7_seg"})  # fmt: skip
    assert created.status_code == 201, created.text
    collection_id = created.json()["id"]

    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{segweb}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{segweb}/jobs/")
    page.click("text=Collections")
    page.click("text=holiday")
    page.wait_for_url(f"{segweb}/collections/{collection_id}/")
    assert "1 file not made into jobs" in page.inner_text("#collection-progress")

    page.evaluate("window.__notReloaded = true")
    page.locator("#collection-state", has_text="finished").wait_for(timeout=240_000)
    assert page.evaluate("window.__notReloaded === true")
    assert page.inner_text('[data-count="done"]') == "2"
    assert page.evaluate("document.getElementById('collection-bar').value") == 2
    badges = page.locator("#job-grid [data-role=status]").all_inner_texts()
    assert [b.lower() for b in badges] == ["succeeded", "succeeded"]
    assert "cup" in page.inner_text("#job-grid")
    assert not page.is_visible("text=Cancel queued")  # nothing left to cancel
    # Nothing wider than the phone's screen.
    wider = "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
    wider += " > 390).map(e => e.tagName + '.' + e.className)"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(wider)
    assert errors == []
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "collection-page-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=OUTPUT / "collection-page.png", full_page=True)
