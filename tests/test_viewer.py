"""The job page's viewer in a real browser (Debian's Chromium, Playwright): slider, hover, keys,
saving the threshold, and another user's attempts. The site runs under gunicorn with one finished
job of 12 instances made through the worker's path (bench/viewer.py --prepare)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.viewer import wait_until
from tests.live import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI (`make browser` installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed (`make browser` installs it)")
    from playwright.sync_api import sync_playwright

    from bench.viewer import launch

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from bench.viewer import start_web

    data_dir = tmp_path_factory.mktemp("segweb-viewer")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))}
    env.pop("AWS_STORAGE_BUCKET_NAME", None)
    prepared = subprocess.run(
        [sys.executable, "bench/viewer.py", "--prepare", str(data_dir), "--instances", "12"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    job_id = prepared.stdout.split()[-1]
    port = free_port()
    web = start_web(data_dir, port)
    try:
        yield f"http://127.0.0.1:{port}", job_id, data_dir, env
    finally:
        web.terminate()
        web.wait(10)


def open_job(browser, site, user="alice", **context):
    from bench.viewer import signed_in_page

    base, job_id = site[:2]
    page = signed_in_page(browser, base, user=user, **context)
    page.set_default_timeout(15_000)
    page.goto(f"{base}/jobs/{job_id}/")
    wait_until(page, "window.segwebViewer && window.segwebViewer.stats.firstDrawMs !== null")
    return page


def set_threshold(page, value: float) -> None:
    page.locator("#threshold").fill(str(value))


def visible_rows(page) -> int:
    return page.locator("#detections tbody tr:not([hidden])").count()


INK = """() => {
  const c = document.getElementById('stage-masks');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0;
  for (let i = 3; i < d.length; i += 4) sum += d[i];
  return sum;
}"""

SHOWN = "() => window.segwebViewer.instances.filter(i => i.visible).map(i => i.rank)"


def test_the_slider_hides_and_shows_instances_and_their_rows(browser, site):
    page = open_job(browser, site)
    scores = page.evaluate("() => window.segwebViewer.instances.map(i => i.score)")
    assert len(scores) == 12
    assert visible_rows(page) == sum(s >= 0.5 for s in scores)
    ink_at_half = page.evaluate(INK)

    set_threshold(page, 0.9)
    assert visible_rows(page) == sum(s >= 0.9 for s in scores)
    assert page.evaluate(SHOWN) == [i for i, s in enumerate(scores) if s >= 0.9]
    assert page.evaluate(INK) < ink_at_half  # fewer masks drawn
    assert page.locator("#shown-count").inner_text() == str(sum(s >= 0.9 for s in scores))

    set_threshold(page, 0.25)
    assert visible_rows(page) == 12
    assert page.evaluate(INK) > ink_at_half

    page.locator(".class-toggle input").first.uncheck()  # class toggles hide theirs too
    label = page.locator(".class-toggle").first.get_attribute("data-label")
    hidden = page.locator("#detections tbody tr[hidden]")
    assert hidden.count() == sum(1 for lab in page.evaluate(LABELS) if lab == label)
    page.close()


LABELS = "() => window.segwebViewer.instances.map(i => i.label)"

INSIDE = """rank => {
  const v = window.segwebViewer, inst = v.instances[rank], m = inst.mask;
  const rect = v.stage.getBoundingClientRect();
  for (let y = 0; y < m.h; y++) for (let x = 0; x < m.w; x++) {
    if (!m.bits[y * m.w + x]) continue;
    const ix = (m.x + x + 0.5) / v.s, iy = (m.y + y + 0.5) / v.s;
    const cx = rect.left + v.zoom.tx + ix * v.zoom.z, cy = rect.top + v.zoom.ty + iy * v.zoom.z;
    if (v.pick(cx, cy) === inst) return [cx, cy];
  }
  return null;
}"""


def test_hovering_a_row_highlights_its_mask_and_hovering_a_mask_its_row(browser, site):
    page = open_job(browser, site)
    row = page.locator("#detections tbody tr:not([hidden])").nth(1)
    rank = int(row.get_attribute("data-rank"))
    row.hover()
    assert page.evaluate("() => window.segwebViewer.focus.rank") == rank
    assert page.locator("#stage-box").is_visible()
    label = page.evaluate(f"() => window.segwebViewer.instances[{rank}].label")
    assert label in page.locator("#stage-tag").inner_text()

    page.locator("#stage").scroll_into_view_if_needed()
    target = page.evaluate(INSIDE, 0)
    assert target, "instance 0 has a pixel no other instance covers"
    page.mouse.move(*target)
    first_row = page.locator('#detections tbody tr[data-rank="0"]')
    assert "active" in first_row.get_attribute("class")
    assert "active" not in (row.get_attribute("class") or "")

    page.mouse.click(*target)  # a click pins it: moving away keeps it
    page.mouse.move(5, 5)
    assert page.evaluate("() => window.segwebViewer.pinned.rank") == 0
    assert "pinned" in first_row.get_attribute("class")
    page.close()


def test_the_keyboard_steps_through_instances_and_toggles_the_overlay(browser, site):
    page = open_job(browser, site)
    page.focus("#stage")
    shown = page.evaluate(SHOWN)
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => window.segwebViewer.focus.rank") == shown[0]
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => window.segwebViewer.focus.rank") == shown[1]
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("() => window.segwebViewer.focus.rank") == shown[0]
    wait_until(page, "document.getElementById('viewer-status').textContent.includes('#1')")

    page.keyboard.press("o")
    assert page.get_attribute('[data-view="photo"]', "aria-pressed") == "true"
    assert page.evaluate(INK) == 0  # no mask drawn
    page.keyboard.press("o")
    assert page.get_attribute('[data-view="overlay"]', "aria-pressed") == "true"

    page.keyboard.press("Escape")
    first = page.locator("#detections tbody tr:not([hidden])").first
    first.focus()
    assert page.evaluate("() => window.segwebViewer.focus.rank") == shown[0]
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("() => document.activeElement.dataset.rank")
    assert int(focused) == shown[1]
    page.keyboard.press("Enter")
    assert page.evaluate("() => window.segwebViewer.pinned.rank") == shown[1]
    page.close()


def test_the_threshold_is_saved_and_survives_a_reload(browser, site):
    base, job_id = site[:2]
    page = open_job(browser, site)
    set_threshold(page, 0.7)
    page.wait_for_selector('#viewer[data-saved="0.7"]')
    wait_until(page, "document.getElementById('viewer-status').textContent.includes('saved')")
    page.reload()
    wait_until(page, "window.segwebViewer")
    assert page.input_value("#threshold") == "0.7"
    scores = page.evaluate("() => window.segwebViewer.instances.map(i => i.score)")
    assert visible_rows(page) == sum(s >= 0.7 for s in scores)
    api = page.request.get(f"{base}/api/jobs/{job_id}/").json()
    assert api["score_threshold"] == 0.7
    assert len(api["detections"]) == visible_rows(page)
    set_threshold(page, 0.5)
    page.wait_for_selector('#viewer[data-saved="0.5"]')
    page.close()


def test_another_user_can_neither_see_nor_change_the_threshold(browser, site):
    from bench.viewer import signed_in_page

    base, job_id = site[:2]
    page = signed_in_page(browser, base, user="bob")
    assert page.goto(f"{base}/jobs/{job_id}/").status == 404
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.patch(
        f"{base}/api/jobs/{job_id}/",
        data={"score_threshold": 0.3},
        headers={"X-CSRFToken": csrf, "Referer": f"{base}/jobs/"},
    )
    assert response.status == 404
    page.close()
    owner_page = open_job(browser, site)
    assert owner_page.input_value("#threshold") == "0.5"  # unchanged
    owner_page.close()


def test_the_page_fits_a_phone_without_wrapping_the_navigation(browser, site):
    page = open_job(
        browser, site, viewport=(390, 844), device_scale_factor=2, is_mobile=True, has_touch=True
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    nav_top = {
        round(b["y"]) for b in (page.locator(".nav a").nth(i).bounding_box() for i in range(3))
    }
    assert len(nav_top) == 1
    assert page.locator(".topbar").bounding_box()["height"] < 60
    assert not page.locator(".col-box").first.is_visible()  # no one-number-per-line column
    page.locator("#detections tbody tr:not([hidden])").first.tap()
    assert page.evaluate("() => window.segwebViewer.pinned !== null")
    page.close()


def test_history_shows_a_job_finishing_without_a_reload(browser, site):
    from bench.viewer import signed_in_page
    from tests.photos import COFFEE

    base, _, data_dir, env = site
    page = signed_in_page(browser, base)
    page.set_default_timeout(15_000)
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    created = page.request.post(
        f"{base}/api/jobs/",
        multipart={"image": {"name": "coffee.png", "mimeType": "image/png",
                             "buffer": COFFEE.read_bytes()}},
        headers={"X-CSRFToken": csrf, "Referer": f"{base}/jobs/"},
    )  # fmt: skip
    assert created.status == 201, created.text()
    job_id = created.json()["id"]
    page.goto(f"{base}/jobs/")
    card = page.locator(f'.job-card[data-job="{job_id}"]')
    assert card.locator("[data-badge]").inner_text().lower() == "queued"
    page.evaluate("window.__notReloaded = true")
    requests_made: list[str] = []
    page.on("request", lambda r: requests_made.append(r.url))

    subprocess.run(
        [sys.executable, "bench/viewer.py", "--finish", str(data_dir), job_id, "--instances", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    card.locator("[data-badge].succeeded").wait_for()
    assert page.evaluate("window.__notReloaded === true")
    assert card.locator(".chip").count() >= 1
    assert "?v=" in card.locator("img.thumb").get_attribute("src")
    polls = [u for u in requests_made if "/api/jobs/?" in u]
    assert polls and all(f"id={job_id}" in u for u in polls)  # one request for the page
    page.close()
