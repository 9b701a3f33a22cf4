"""Per-instance cut-outs and masks, per-job and bulk exports: what they hold, who gets them,
and what a hostile request costs."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from rest_framework.test import APIClient

from segmentation import datasets, services
from segmentation.models import Export
from tests.conftest import stored_files
from tests.factories import create_job, fail, succeed

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # pycocotools
]


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def job(owner):
    return succeed(create_job(owner), labels=("dog", "person", "person"))


@pytest.fixture
def published(monkeypatch):
    """Exports queued (on commit) instead of sent to the broker; run them with run_all()."""
    queued: list = []
    monkeypatch.setattr(services, "_publish_export", queued.append)
    return queued


def run_all(queued: list) -> None:
    while queued:
        services.export_run(export_id=queued.pop(0))


# --- One instance ---------------------------------------------------------------------------


def test_the_mask_is_a_png_of_the_photos_size_with_exactly_the_rles_pixels(owner, job):
    response = api(owner).get(f"/api/jobs/{job.pk}/instances/1/mask/")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert 'filename="coffee-1-person-mask.png"' in response["Content-Disposition"]
    mask = np.asarray(Image.open(io.BytesIO(body_of(response))))
    assert mask.shape == (job.height, job.width)
    expected = coco_mask.decode(job.detections.get(rank=1).rle).astype(bool)
    assert np.array_equal(mask == 255, expected)
    assert set(np.unique(mask)) == {0, 255}


def test_the_cutout_is_the_box_with_the_photo_on_the_mask_and_transparent_elsewhere(owner, job):
    response = api(owner).get(f"/api/jobs/{job.pk}/instances/0/cutout/?download=1")
    assert response["Content-Disposition"].startswith("attachment;")
    cutout = np.asarray(Image.open(io.BytesIO(body_of(response))))
    detection = job.detections.get(rank=0)
    x0, y0, x1, y1 = datasets.cutout_box(detection, job.width, job.height)
    assert cutout.shape == (y1 - y0, x1 - x0, 4)
    inside = coco_mask.decode(detection.rle).astype(bool)[y0:y1, x0:x1]
    assert np.array_equal(cutout[..., 3] == 255, inside)
    assert set(np.unique(cutout[..., 3])) == {0, 255}
    photo = np.asarray(datasets.load_photo(job))[y0:y1, x0:x1]
    assert np.array_equal(cutout[..., :3][inside], photo[inside])


def test_a_box_past_the_photos_edge_is_clipped(owner):
    job = succeed(create_job(owner), labels=("dog",))
    job.detections.update(x1=-15.5, y1=-3, x2=job.width + 40, y2=30.2)
    detection = job.detections.get()
    assert datasets.cutout_box(detection, job.width, job.height) == (0, 0, job.width, 31)


def test_instances_follow_the_current_threshold(owner, job):
    client = api(owner)
    assert client.get(f"/api/jobs/{job.pk}/instances/2/mask/").status_code == 200
    services.job_set_threshold(job=job, threshold=0.75)  # scores 0.9, 0.8, 0.7: two left
    response = client.get(f"/api/jobs/{job.pk}/instances/2/mask/")
    assert response.status_code == 404
    assert "indexes go from 0 to 1" in response.json()["detail"]


@pytest.mark.parametrize("path", ["99999999999999999999999/mask/", "0/outline/", "-1/mask/"])
def test_a_bad_instance_route_is_a_404(owner, job, path):
    assert api(owner).get(f"/api/jobs/{job.pk}/instances/{path}").status_code == 404


def test_another_users_instances_are_a_404(other_user, job):
    for kind in ("mask", "cutout"):
        assert api(other_user).get(f"/api/jobs/{job.pk}/instances/0/{kind}/").status_code == 404


def test_an_unfinished_job_has_no_instances(owner):
    job = create_job(owner)
    assert api(owner).get(f"/api/jobs/{job.pk}/instances/0/mask/").status_code == 409


def test_a_photo_the_store_cannot_read_is_a_503(owner, job, monkeypatch):
    def broken(job):
        raise datasets.PhotoUnavailable("The uploaded photo could not be read from storage.")

    monkeypatch.setattr(datasets, "_read_photo", broken)
    assert api(owner).get(f"/api/jobs/{job.pk}/instances/0/cutout/").status_code == 503


# --- One job's export -----------------------------------------------------------------------


def zip_of(response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.content[:300]
    return zipfile.ZipFile(io.BytesIO(body_of(response)))


@pytest.mark.parametrize(
    ("fmt", "files"),
    [
        ("coco", {"annotations/instances_default.json", "images/default/coffee-{id}.png"}),
        ("coco_polygons", {"annotations/instances_default.json", "images/default/coffee-{id}.png"}),
        ("yolo", {"data.yaml", "images/train/coffee-{id}.png", "labels/train/coffee-{id}.txt"}),
        ("masks", {"images/coffee-{id}.png", "instances.csv", "masks/coffee-{id}/0_dog.png",
                   "masks/coffee-{id}/1_person.png", "masks/coffee-{id}/2_person.png"}),
        ("cutouts", {"instances.csv", "cutouts/coffee-{id}/0_dog.png",
                     "cutouts/coffee-{id}/1_person.png", "cutouts/coffee-{id}/2_person.png"}),
    ],
)  # fmt: skip
def test_a_job_exports_in_each_formats_layout(owner, job, fmt, files):
    response = api(owner).get(f"/api/jobs/{job.pk}/export/?format={fmt}")
    assert response["Content-Disposition"] == f'attachment; filename="coffee-{fmt}.zip"'
    names = set(zip_of(response).namelist())
    assert names == {f.format(id=job.pk.hex[:8]) for f in files}


def test_the_photo_is_exported_byte_for_byte(owner, job):
    archive = zip_of(api(owner).get(f"/api/jobs/{job.pk}/export/?format=coco"))
    with job.image.open("rb") as f:
        assert archive.read(f"images/default/coffee-{job.pk.hex[:8]}.png") == f.read()


def test_a_photo_turned_by_exif_is_exported_upright(owner):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.new("RGB", (80, 40), (200, 30, 30)).save(buffer, "JPEG", exif=exif)
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("turned.jpg", buffer.getvalue(), content_type="image/jpeg")
    job = succeed(create_job(owner, upload), labels=("dog",))
    assert (job.width, job.height) == (40, 80)
    archive = zip_of(api(owner).get(f"/api/jobs/{job.pk}/export/?format=coco"))
    name = next(n for n in archive.namelist() if n.startswith("images/"))
    with Image.open(io.BytesIO(archive.read(name))) as image:
        assert image.size == (40, 80)
        assert image.getexif().get(0x0112, 1) == 1


def test_an_unknown_format_is_a_400_and_an_unfinished_job_a_409(owner, job):
    response = api(owner).get(f"/api/jobs/{job.pk}/export/?format=json")
    assert response.status_code == 400
    assert "coco_polygons" in response.json()["detail"]
    assert api(owner).get(f"/api/jobs/{job.pk}/export/").status_code == 400
    pending = create_job(owner)
    assert api(owner).get(f"/api/jobs/{pending.pk}/export/?format=coco").status_code == 409


def test_too_many_pixels_to_draw_in_a_request_is_a_413_pointing_to_bulk_exports(
    owner, job, settings
):
    settings.SEGWEB = {**settings.SEGWEB, "DIRECT_EXPORT_MAX_MEGAPIXELS": 0.5}
    response = api(owner).get(f"/api/jobs/{job.pk}/export/?format=cutouts")
    assert response.status_code == 413
    assert "POST /api/exports/" in response.json()["detail"]
    assert api(owner).get(f"/api/jobs/{job.pk}/export/?format=coco").status_code == 200


def test_another_users_job_export_is_a_404(other_user, job):
    assert api(other_user).get(f"/api/jobs/{job.pk}/export/?format=coco").status_code == 404


# --- Bulk exports ---------------------------------------------------------------------------


def test_a_bulk_export_by_filters_is_queued_runs_and_downloads(
    owner, other_user, published, django_capture_on_commit_callbacks
):
    dogs = [succeed(create_job(owner), labels=("dog", "person")) for _ in range(3)]
    succeed(create_job(owner), labels=("cat",))
    succeed(create_job(other_user), labels=("dog",))
    client = api(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/exports/", {"format": "coco", "filters": {"has": ["dog"]}}, format="json"
        )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "status", "url"} and body["status"] == "queued"
    assert client.get(body["url"]).json()["download_url"] is None
    run_all(published)
    status = client.get(body["url"]).json()
    assert status["status"] == "succeeded"
    assert status["progress"] == {"done": 3, "total": 3}
    download = client.get(status["download_url"])
    assert download["Content-Disposition"].startswith('attachment; filename="segweb-coco-')
    archive = zipfile.ZipFile(io.BytesIO(body_of(download)))
    coco = json.loads(archive.read("annotations/instances_default.json"))
    assert {image["segweb_job"] for image in coco["images"]} == {str(j.pk) for j in dogs}
    assert len(coco["annotations"]) == 6


def test_a_bulk_coco_export_loads_in_pycocotools_with_the_same_masks(
    owner, published, django_capture_on_commit_callbacks, tmp_path
):
    jobs = [succeed(create_job(owner), labels=("dog", "person", "person")) for _ in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        export = services.export_create(owner=owner, format="coco", job_ids=[j.pk for j in jobs])
    run_all(published)
    export.refresh_from_db()
    with export.file.open("rb") as f:
        zipfile.ZipFile(f).extractall(tmp_path)
    coco = COCO(str(tmp_path / "annotations/instances_default.json"))
    assert len(coco.getImgIds()) == 2
    for image in coco.loadImgs(coco.getImgIds()):
        assert (tmp_path / "images/default" / image["file_name"]).is_file()
        job = next(j for j in jobs if str(j.pk) == image["segweb_job"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert [coco.loadCats(a["category_id"])[0]["name"] for a in annotations] == [
            "dog", "person", "person",
        ]  # fmt: skip
        for annotation, detection in zip(annotations, job.detections.order_by("rank"), strict=True):
            assert np.array_equal(coco.annToMask(annotation), coco_mask.decode(detection.rle))


def test_another_users_job_ids_look_like_missing_ones(owner, other_user, published):
    theirs = succeed(create_job(other_user), labels=("dog",))
    response = api(owner).post(
        "/api/exports/", {"format": "coco", "jobs": [str(theirs.pk)]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["detail"] == f"No such job: {theirs.pk}."
    assert not Export.objects.exists()


def test_unfinished_jobs_are_named(owner, published):
    failed = fail(create_job(owner))
    response = api(owner).post(
        "/api/exports/", {"format": "coco", "jobs": [str(failed.pk)]}, format="json"
    )
    assert response.status_code == 400
    assert str(failed.pk) in response.json()["detail"]


def test_an_export_of_too_many_jobs_is_refused(owner, published, settings):
    settings.SEGWEB = {**settings.SEGWEB, "EXPORT_MAX_JOBS": 2}
    for _ in range(3):
        succeed(create_job(owner), labels=("dog",))
    response = api(owner).post("/api/exports/", {"format": "yolo", "filters": {}}, format="json")
    assert response.status_code == 400
    assert "at most 2" in response.json()["detail"]


def test_exports_in_progress_per_user_are_limited(owner, other_user, published, settings):
    settings.SEGWEB = {**settings.SEGWEB, "EXPORT_MAX_ACTIVE": 1}
    succeed(create_job(owner), labels=("dog",))
    succeed(create_job(other_user), labels=("dog",))
    request = {"format": "coco", "filters": {"has": "dog"}}
    assert api(owner).post("/api/exports/", request, format="json").status_code == 202
    second = api(owner).post("/api/exports/", request, format="json")
    assert second.status_code == 429
    assert "in progress" in second.json()["detail"]
    assert api(other_user).post("/api/exports/", request, format="json").status_code == 202


@pytest.mark.parametrize(
    ("request_body", "says"),
    [
        ({"format": "coco"}, "either jobs or filters"),
        ({"format": "coco", "jobs": [], "filters": {}}, "jobs"),
        ({"format": "pdf", "filters": {}}, "format"),
        ({"format": "coco", "jobs": ["not-a-uuid"]}, "jobs"),
        ({"format": "coco", "filters": {"owner": "1"}}, "Unknown filter 'owner'"),
        ({"format": "coco", "filters": {"collection": "1"}}, "collection: Enter a valid UUID"),
        ({"format": "coco", "filters": {"has": ["unicorn"]}}, "'unicorn' is not a class"),
        ({"format": "coco", "filters": {"has": [{"a": 1}]}}, "a string, or a list"),
        ({"format": "coco", "filters": {"has": ["dog"] * 11}}, "a string, or a list"),
        ({"format": "coco", "filters": {"status": "done"}}, "status"),
        ({"format": "coco", "filters": "has=dog"}, "filters"),
        (["coco"], "Invalid data"),
    ],
)
def test_a_malformed_export_request_is_a_400_saying_why(owner, published, request_body, says):
    succeed(create_job(owner), labels=("dog",))
    response = api(owner).post("/api/exports/", request_body, format="json")
    assert response.status_code == 400, response.json()
    assert says in response.json()["detail"]
    assert not Export.objects.exists()


def test_deeply_nested_or_huge_json_is_refused_without_an_error(owner, published):
    client = api(owner)
    deep = '{"format": "coco", "filters": {"has": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    response = client.post("/api/exports/", deep, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.json()["detail"]
    huge = json.dumps({"format": "coco", "jobs": ["x" * 100] * 20_000})
    assert client.post("/api/exports/", huge, content_type="application/json").status_code == 413


def test_another_users_export_is_a_404_everywhere(owner, other_user, staff, published):
    succeed(create_job(owner), labels=("dog",))
    export = services.export_create(owner=owner, format="coco", filters={})
    run_all([export.pk])
    for user in (other_user, staff):
        client = api(user)
        assert client.get(f"/api/exports/{export.pk}/").status_code == 404
        assert client.get(f"/api/exports/{export.pk}/download/").status_code == 404
        assert client.delete(f"/api/exports/{export.pk}/").status_code == 404
        assert client.get("/api/exports/").json()["results"] == []
    assert api(None).get(f"/api/exports/{export.pk}/").status_code == 401


def test_a_failed_photo_read_fails_the_export_and_leaves_no_file(
    owner, published, private_storage, monkeypatch
):
    succeed(create_job(owner), labels=("dog",))
    export = services.export_create(owner=owner, format="coco", filters={})

    def broken(job):
        raise datasets.PhotoUnavailable("The uploaded photo could not be read from storage.")

    monkeypatch.setattr(datasets, "_read_photo", broken)
    services.export_run(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == "failed"
    assert "could not be read" in export.error
    assert not [f for f in stored_files(private_storage) if f.startswith("exports/")]
    response = api(owner).get(f"/api/exports/{export.pk}/download/")
    assert response.status_code == 409


def test_expired_exports_are_deleted_with_their_files(
    owner, published, private_storage, django_capture_on_commit_callbacks
):
    succeed(create_job(owner), labels=("dog",))
    export = services.export_create(owner=owner, format="coco", filters={})
    services.export_run(export_id=export.pk)
    export.refresh_from_db()
    assert export.file.name in stored_files(private_storage)
    assert services.exports_sweep(now=timezone.now())["expired"] == 0
    later = export.expires_at + timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.exports_sweep(now=later)["expired"] == 1
    assert not Export.objects.exists()
    assert not [f for f in stored_files(private_storage) if f.startswith("exports/")]


def test_an_export_whose_worker_died_is_failed_by_the_sweep(owner, published):
    succeed(create_job(owner), labels=("dog",))
    export = services.export_create(owner=owner, format="coco", filters={})
    Export.objects.filter(pk=export.pk).update(
        status="running", heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    services.exports_sweep()
    export.refresh_from_db()
    assert export.status == "failed"
    assert "stopped" in export.error


def test_hidden_and_deleted_jobs_are_left_out_of_a_queued_export(owner, staff, published):
    kept, hidden, deleted = (succeed(create_job(owner), labels=("dog",)) for _ in range(3))
    export = services.export_create(owner=owner, format="coco", filters={})
    services.job_hide(job=hidden, by=staff, reason="spam")
    services.job_delete(job=deleted)
    services.export_run(export_id=export.pk)
    export.refresh_from_db()
    with export.file.open("rb") as f:
        coco = json.loads(zipfile.ZipFile(f).read("annotations/instances_default.json"))
    assert [image["segweb_job"] for image in coco["images"]] == [str(kept.pk)]


def test_hiding_a_job_withdraws_the_finished_exports_that_hold_it(
    owner, staff, published, private_storage, django_capture_on_commit_callbacks
):
    hidden = succeed(create_job(owner), labels=("dog",))
    export = services.export_create(owner=owner, format="coco", filters={})
    services.export_run(export_id=export.pk)
    export.refresh_from_db()
    name = export.file.name
    assert api(owner).get(f"/api/exports/{export.pk}/download/").status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        services.job_hide(job=hidden, by=staff, reason="spam")

    assert api(owner).get(f"/api/exports/{export.pk}/download/").status_code == 409
    body = api(owner).get(f"/api/exports/{export.pk}/").json()
    assert body["status"] == "failed" and "moderator" in body["error"]
    assert body["download_url"] is None
    assert name not in stored_files(private_storage)
