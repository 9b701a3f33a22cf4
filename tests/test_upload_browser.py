"""A real browser uploads several photos, a ZIP and a folder through the upload page: each
becomes one collection, under the page's Content-Security-Policy."""

from __future__ import annotations

import shutil
import zipfile

import pytest

from bench.viewer import wait_until
from tests.live import PASSWORD, running_segweb
from tests.photos import CHELSEA, COFFEE
from tests.test_browser import browser, csp_violations  # noqa: F401 - the Chromium fixture

pytestmark = pytest.mark.slow

JOBS = "document.querySelectorAll('#job-grid [data-role=status]').length"


@pytest.fixture(scope="module")
def segweb(tmp_path_factory):
    with running_segweb(tmp_path_factory.mktemp("segweb-upload-browser")) as base:
        yield base


@pytest.fixture
def page(browser, segweb):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(f"{segweb}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{segweb}/jobs/")
    yield page
    page.close()


def upload(page, segweb, selector: str, files) -> None:
    page.goto(f"{segweb}/upload/")
    page.set_input_files(selector, files)
    page.click("#upload-button")
    page.wait_for_url(f"{segweb}/collections/*/")


def test_two_photos_become_one_collection(page, segweb):
    blocked = csp_violations(page)
    upload(page, segweb, "#id_images", [str(COFFEE), str(CHELSEA)])
    wait_until(page, f"{JOBS} === 2")
    assert "2 photos" in page.inner_text("h1")
    assert blocked == []


def test_a_zip_becomes_one_collection_named_after_it(page, segweb, tmp_path):
    blocked = csp_violations(page)
    archive = tmp_path / "holiday.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(COFFEE, "coffee.png")
        z.writestr("notes.txt", "not a photo")
    upload(page, segweb, "#id_images", str(archive))
    wait_until(page, f"{JOBS} === 1")
    assert "holiday" in page.inner_text("h1")
    assert "1 file not made into jobs" in page.inner_text("#collection-progress")
    assert blocked == []


def test_a_folder_becomes_one_collection_named_after_it_without_its_other_files(
    page, segweb, tmp_path
):
    blocked = csp_violations(page)
    folder = tmp_path / "trip"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(COFFEE, folder / "coffee.png")
    shutil.copy(CHELSEA, folder / "day2" / "chelsea.png")
    (folder / "notes.txt").write_text("not a photo")

    page.goto(f"{segweb}/upload/")
    assert page.is_visible("text=or choose a folder")
    page.set_input_files("#id_folder", str(folder))
    assert "skipped (not a photo)" in page.inner_text("#file-list")
    page.click("#upload-button")
    page.wait_for_url(f"{segweb}/collections/*/")
    wait_until(page, f"{JOBS} === 2")
    assert "trip" in page.inner_text("h1")
    assert blocked == []


def test_dropped_folders_are_read_to_the_last_batch_of_every_level(page, segweb):
    """Drag and drop cannot be driven from Playwright: the walk is run on entries shaped like
    Chromium's, whose readers answer in batches until an empty one."""
    page.goto(f"{segweb}/upload/")
    names = page.evaluate(
        """async () => {
          const src = document.querySelector("script[src*='upload']").src;
          const { filesOf, kindOf } = await import(src);
          const file = (name) => ({ isFile: true, file: (ok) => ok(new File(["x"], name)) });
          const folder = (name, ...batches) => ({
            isDirectory: true, name,
            createReader: () => { const left = [...batches, []];
                                  return { readEntries: (ok) => ok(left.shift()) }; },
          });
          const tree = folder("trip", [file("a.jpg"), file("b.HEIC")],
                              [folder("day2", [file("c.png")], [file("d.txt")])],
                              [file("e.zip")]);
          const files = await filesOf([tree, file("f.gif")]);
          return files.map((f) => f.name + ":" + kindOf(f));
        }"""
    )
    assert names == [
        "a.jpg:photo",
        "b.HEIC:photo",
        "c.png:photo",
        "d.txt:skipped",
        "e.zip:zip",
        "f.gif:photo",
    ]


def test_more_photos_than_one_upload_takes_are_refused_before_sending(page, segweb):
    page.goto(f"{segweb}/upload/")
    page.evaluate("document.getElementById('upload-form').dataset.archiveMaxFiles = '1'")
    page.set_input_files("#id_images", [str(COFFEE), str(CHELSEA)])
    page.click("#upload-button")
    wait_until(page, "document.getElementById('upload-progress').textContent !== ''")
    message = page.inner_text("#upload-progress")
    assert "at most 1 photos" in message and "several ZIPs" in message
    assert page.url == f"{segweb}/upload/"
