"""``python -m segweb_client`` through ``main(argv)``: its parts, then end to end against a
real segweb (`make run`'s processes), with a webhook receiver on 127.0.0.1 and /metrics."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
import zipfile

import pytest
from django.http.multipartparser import MultiPartParser
from django.test import RequestFactory

import segweb_client
from segweb_client import MultipartBody, main, pack, parse_has, photos_in
from tests.live import PASSWORD, running_segweb
from tests.photos import ASTRONAUT, CHELSEA, COFFEE


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SEGWEB_URL", raising=False)
    monkeypatch.delenv("SEGWEB_TOKEN", raising=False)


# --- parts ----------------------------------------------------------------------------------


def test_the_streamed_body_is_multipart_that_django_reads(tmp_path):
    photo = tmp_path / 'a "quoted" name.png'
    photo.write_bytes(COFFEE.read_bytes())
    body = MultipartBody({"score_threshold": "0.4"}, [("images", photo.name, photo),
                                                      ("images", "b.png", COFFEE)])  # fmt: skip
    raw = b"".join(iter(lambda: body.read(7919), b""))

    assert len(raw) == len(body)
    request = RequestFactory().post("/", data=raw, content_type=body.content_type)
    fields, files = MultiPartParser(request.META, io.BytesIO(raw), request.upload_handlers).parse()
    assert fields["score_threshold"] == "0.4"
    first, second = files.getlist("images")
    assert first.read() == COFFEE.read_bytes()
    assert second.name == "b.png"


def test_folders_are_searched_for_photos_and_zips_kept_apart(tmp_path):
    (tmp_path / "shoot" / "day2").mkdir(parents=True)
    for name in ("a.jpg", "day2/b.PNG", "notes.txt", ".hidden.jpg"):
        (tmp_path / "shoot" / name).write_bytes(b"x")
    (tmp_path / "more.zip").write_bytes(b"PK")

    photos, archives = photos_in([str(tmp_path / "shoot"), str(tmp_path / "more.zip")])

    assert [p.name for p in photos] == ["a.jpg", "b.PNG"]
    assert [a.name for a in archives] == ["more.zip"]


def test_packing_keeps_every_photo_under_a_unique_name(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "coffee.png").write_bytes(b"1")
    archive = pack([COFFEE, tmp_path / "x" / "coffee.png"], tmp_path / "out.zip")
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["coffee.png", "coffee-1.png"]


@pytest.mark.parametrize(("value", "parsed"), [("person:2", ("person", 2)), ("cat", ("cat", 1))])
def test_has_takes_a_label_and_a_count(value, parsed):
    assert parse_has(value) == parsed


def test_commands_need_a_sign_in_first(capsys):
    assert main(["jobs"]) == 1
    assert "Not signed in" in capsys.readouterr().err


def test_an_unreachable_server_is_a_message_not_a_traceback(capsys):
    assert main(["--url", "http://127.0.0.1:9", "--token", "x", "jobs"]) == 1
    assert "Cannot reach http://127.0.0.1:9" in capsys.readouterr().err


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_login_upload_wait_list_export_with_webhooks_and_metrics(tmp_path, monkeypatch, capsys):
    from tests.test_webhooks import Receiver

    receiver = Receiver()
    env = {"SEGWEB_WEBHOOK_ALLOW_LOOPBACK": "1", "SEGWEB_METRICS_TOKEN": "metrics-token"}
    try:
        with running_segweb(tmp_path / "segweb", **env) as base:
            monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
            assert main(["--url", base, "login", "--username", "alice", "--password-stdin"]) == 0
            api = segweb_client.Api(base, segweb_client.load_config()["token"])
            secret = api.request(
                "POST", "/api/webhooks/", expect=(201,),
                json={"url": receiver.url, "events": ["job.finished", "collection.finished"]},
            ).json()["secret"]  # fmt: skip
            folder = tmp_path / "shoot"
            folder.mkdir()
            for photo in (COFFEE, CHELSEA, ASTRONAUT):
                (folder / photo.name).write_bytes(photo.read_bytes())
            (folder / "notes.jpg").write_bytes(b"not a photo")
            capsys.readouterr()

            code = main(["upload", str(folder), "--zip", "--wait", "--threshold", "0.5"])

            out, err = capsys.readouterr()
            assert code == 0, out + err
            assert "3 photo(s) queued" in out
            assert "rejected notes.jpg: The file is not an image" in out
            assert "3 succeeded, 0 failed" in out
            assert "100%" in err  # the progress bars

            assert main(["jobs", "--has", "cup:1"]) == 0
            listed = capsys.readouterr().out.splitlines()
            assert [line.split()[2] for line in listed] == ["coffee.png"]
            assert main(["jobs", "--has", "person:2"]) == 0
            assert capsys.readouterr().out == ""

            assert main(["export", "--format", "coco", "--out", str(tmp_path / "coco")]) == 0
            coco = json.loads((tmp_path / "coco/annotations/instances_default.json").read_text())
            assert len(coco["images"]) == 3
            assert {"cup", "cat"} <= {c["name"] for c in coco["categories"]
                                      if any(a["category_id"] == c["id"]
                                             for a in coco["annotations"])}  # fmt: skip
            assert len(list((tmp_path / "coco/images/default").iterdir())) == 3

            bearer = {"Authorization": "Bearer metrics-token"}
            scrape = api.request("GET", "/metrics", headers=bearer).text
            assert 'segweb_jobs{model="yolov7_seg",status="succeeded"} 3.0' in scrape
            assert 'segweb_uploads_refused_total{reason="not_an_image"} 1.0' in scrape

            # Signing in again replaces this client's token; signing out revokes it.
            def answer(token: str) -> int:
                api = segweb_client.Api(base, token)
                return api.request("GET", "/api/jobs/", expect=(200, 401)).status_code

            first = segweb_client.load_config()["token"]
            monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
            assert main(["login", "--username", "alice", "--password-stdin"]) == 0
            second = segweb_client.load_config()["token"]
            assert (answer(first), answer(second)) == (401, 200)
            assert main(["logout"]) == 0
            assert "token" not in segweb_client.load_config()
            assert answer(second) == 401

            deadline = time.monotonic() + 60
            while len(receiver.requests) < 4 and time.monotonic() < deadline:
                time.sleep(0.5)
    finally:
        receiver.close()
    events = sorted(json.loads(r["body"])["event"] for r in receiver.requests)
    assert events == ["collection.finished", "job.finished", "job.finished", "job.finished"]
    for request in receiver.requests:
        expected = hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Segweb-Signature"] == f"sha256={expected}"
