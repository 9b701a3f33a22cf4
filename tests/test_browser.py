"""A real browser (Debian's Chromium, driven by Playwright) uses segweb as a person would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.viewer import wait_until
from tests.live import PASSWORD, running_segweb
from tests.photos import ASTRONAUT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[1] / "test-results"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # CI installs it: a missing browser there is a failure
            pytest.fail(f"{CHROMIUM} is missing on CI (`make browser` installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed (`make browser` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def segweb(tmp_path_factory):
    with running_segweb(tmp_path_factory.mktemp("segweb-browser")) as base:
        yield base


def csp_violations(page) -> list[str]:
    """Chromium logs each thing the Content-Security-Policy blocked as a console error."""
    found: list[str] = []
    page.on(
        "console",
        lambda m: found.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return found


def test_sign_in_upload_watch_it_finish_and_find_it_in_history(browser, segweb):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    blocked = csp_violations(page)

    page.goto(f"{segweb}/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{segweb}/jobs/")

    page.click("text=Upload")
    page.set_input_files("#id_images", str(ASTRONAUT))
    page.click("#upload-button")
    page.wait_for_url(f"{segweb}/jobs/*/")
    job_url = page.url

    # From here on the page must update itself: mark it, and check the mark survives.
    page.evaluate("window.__notReloaded = true")
    page.locator("#job-status", has_text="Succeeded").wait_for(timeout=180_000)
    assert page.evaluate("window.__notReloaded === true")
    assert page.url == job_url

    # The viewer starts on the swapped-in results: the photo with its masks drawn in the page.
    wait_until(page, "window.segwebViewer && window.segwebViewer.stats.firstDrawMs")
    assert page.evaluate("window.segwebViewer.instances.some(i => i.label === 'person')")
    page.locator("#stage-photo").wait_for()
    wait_until(page, "document.getElementById('stage-photo').naturalWidth === 512")
    assert "person" in page.locator("#detections").inner_text()

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "job-page.png", full_page=True)

    page.click("text=History")
    page.fill("#search-has", "person")
    page.click("button:has-text('Search')")
    page.wait_for_url("**/jobs/?has=person*")
    cards = page.locator(".job-card")
    assert cards.count() == 1
    assert "person" in cards.first.inner_text()
    assert page.locator(".facet.active").inner_text().startswith("person")

    # Export what the page shows: progress, then the link (the worker of `make run` builds it).
    page.select_option("#export-format", "coco")
    page.click("#export-button")
    page.locator("#export-download").wait_for(state="visible", timeout=120_000)
    page.locator("#export-status", has_text="Export ready: 1 job.").wait_for()
    with page.expect_download() as download:
        page.click("#export-download")
    assert download.value.suggested_filename.startswith("segweb-coco-")
    page.screenshot(path=OUTPUT / "history.png", full_page=True)

    # The other pages, and the API docs (Swagger UI), under the same policy.
    for path in ("/collections/", "/account/", "/exports/", "/upload/", "/api/docs/"):
        page.goto(f"{segweb}{path}")
        page.wait_for_load_state("networkidle")
    page.locator(".swagger-ui .info").wait_for()  # the docs' script ran
    assert blocked == []


def test_a_bad_file_gets_its_error_next_to_it(browser, segweb, tmp_path):
    page = browser.new_page()
    page.goto(f"{segweb}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{segweb}/jobs/")
    page.goto(f"{segweb}/upload/")
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not a photo")
    page.set_input_files("#id_images", str(bad))
    # The page's script uses the public API with the session and its CSRF token.
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.click("#upload-button")
    assert sent.value.url == f"{segweb}/api/jobs/"
    assert sent.value.headers.get("x-csrftoken")
    item = page.locator(".file-item", has_text="holiday.jpg")
    item.locator(".file-state.error").wait_for()
    assert "not an image in a supported format" in item.inner_text()
    assert page.url == f"{segweb}/upload/"
