"""The product as `make run` serves it: real web server, real queue, real worker, real model."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.live import running_segweb, signed_in_session, wait_for_job
from tests.photos import COFFEE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segweb(tmp_path_factory):
    with running_segweb(tmp_path_factory.mktemp("segweb-e2e")) as base:
        yield base


def test_a_photo_goes_through_the_real_queue_and_model(segweb):
    session = signed_in_session(segweb)
    with COFFEE.open("rb") as f:
        response = session.post(
            f"{segweb}/upload/",
            files={"images": ("coffee.png", f, "image/png")},
            data={"score_threshold": "0.5", "model": "yolov7_seg",
                  "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            allow_redirects=False,
        )  # fmt: skip
    assert response.status_code == 302, response.text[:500]
    job_url = response.headers["Location"]

    status = wait_for_job(session, segweb, job_url)

    assert status["status"] == "succeeded", status["html"]
    assert "cup" in status["html"]
    overlay = session.get(f"{segweb}{job_url}overlay/")
    assert overlay.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (600, 400)
    coco = session.get(f"{segweb}{job_url}coco.json").json()
    assert any(a["category_id"] == 47 for a in coco["annotations"])  # cup


def test_nothing_is_served_publicly(segweb):
    import requests

    session = signed_in_session(segweb)
    anonymous = requests.Session()
    assert anonymous.get(f"{segweb}/jobs/", allow_redirects=False).status_code == 302
    assert anonymous.get(f"{segweb}/media/", allow_redirects=False).status_code in (302, 404)
    assert session.get(f"{segweb}/healthz").text == "ok\n"
    assert session.get(f"{segweb}/readyz").json()["ready"] is True
