"""Collections through the API: ZIPs and several photos, hostile archives, who sees what,
cancel, retry, delete."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from segmentation.models import Collection, Job, RefusedUploadCount
from tests.conftest import image_bytes, photo_upload, stored_files
from tests.factories import api_client, fail, succeed
from tests.photos import CHELSEA, COFFEE, ROCKET

pytestmark = pytest.mark.django_db


def make_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_upload(members: dict[str, bytes], name="shoot.zip", **kwargs) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, make_zip(members, **kwargs), content_type="application/zip")


def post_zip(client, members, *, name="shoot.zip", **fields):
    data = {"archive": zip_upload(members, name=name), "model": "yolov7_seg", **fields}
    return client.post("/api/collections/", data, format="multipart")


PHOTOS = {"a/coffee.png": COFFEE.read_bytes(), "b/chelsea.png": CHELSEA.read_bytes()}


# --- a ZIP becomes a collection -------------------------------------------------------------


def test_a_zip_of_photos_becomes_one_collection_with_one_job_per_photo(alice, owner):
    response = post_zip(alice, {**PHOTOS, "rocket.jpg": ROCKET.read_bytes()}, score_threshold=0.4)

    assert response.status_code == 201, response.json()
    body = response.json()
    collection = Collection.objects.get(pk=body["id"])
    assert body["name"] == "shoot"
    assert body["progress"] == {"total": 3, "queued": 3, "running": 0, "done": 0, "failed": 0}
    assert body["rejected"] == []
    assert body["finished"] is False
    assert body["jobs_url"].endswith(f"/api/jobs/?collection={collection.pk}")
    assert response["Location"] == body["url"]
    jobs = Job.objects.filter(collection=collection)
    assert sorted(j.original_filename for j in jobs) == ["chelsea.png", "coffee.png", "rocket.jpg"]
    assert {j.score_threshold for j in jobs} == {0.4}
    assert {j.owner for j in jobs} == {owner}


def test_the_jobs_url_lists_the_collections_jobs(alice, owner):
    body = post_zip(alice, PHOTOS).json()
    post_zip(alice, {"other.png": COFFEE.read_bytes()})

    listed = alice.get(body["jobs_url"]).json()

    assert listed["count"] == 2
    assert {j["original_filename"] for j in listed["results"]} == {"coffee.png", "chelsea.png"}


def test_member_names_never_reach_the_filesystem(alice, private_storage):
    evil = {"../../../etc/passwd.png": COFFEE.read_bytes(), "/abs/olute.png": COFFEE.read_bytes(),
            "..\\..\\windows.png": COFFEE.read_bytes()}  # fmt: skip
    response = post_zip(alice, evil)

    assert response.status_code == 201, response.json()
    files = stored_files(private_storage)
    assert all(f.startswith(("uploads/", "thumbnails/")) for f in files), files
    assert not any("passwd" in f or "olute" in f or "windows" in f for f in files)
    names = sorted(Job.objects.values_list("original_filename", flat=True))
    assert names == ["olute.png", "passwd.png", "windows.png"]  # kept as data, base name only


def test_members_that_are_not_photos_are_listed_with_a_reason(alice):
    members = {
        **PHOTOS,
        "notes.txt": b"hello",
        "inner.zip": make_zip({"x.png": COFFEE.read_bytes()}),
        "disguised.png": make_zip({"x.png": COFFEE.read_bytes()}),
        "empty.png": b"",
        "folder/": b"",
        "__MACOSX/a/._coffee.png": b"\x00\x05\x16\x07",
        ".DS_Store": b"\x00\x00",
    }
    response = post_zip(alice, members)

    assert response.status_code == 201, response.json()
    rejected = {r["name"]: r["reason"] for r in response.json()["rejected"]}
    assert set(rejected) == {"notes.txt", "inner.zip", "disguised.png", "empty.png"}
    assert "not an image" in rejected["notes.txt"]
    assert "Archives inside the archive are not opened" in rejected["inner.zip"]
    assert "Archives inside the archive are not opened" in rejected["disguised.png"]
    assert rejected["empty.png"] == "The file is empty."
    assert response.json()["progress"]["total"] == 2


def test_a_member_over_the_photo_size_limit_is_rejected_without_being_read(alice, settings):
    settings.SEGWEB = {**settings.SEGWEB, "MAX_UPLOAD_BYTES": 100_000}
    response = post_zip(alice, {"small.png": image_bytes(), "big.bmp": b"B" * 200_000})

    assert response.status_code == 201
    (rejected,) = response.json()["rejected"]
    assert rejected["name"] == "big.bmp"
    assert "the limit is" in rejected["reason"]


def test_an_encrypted_member_is_rejected(alice):
    data = bytearray(make_zip({"a.png": image_bytes(), "secret.png": image_bytes()},
                              compression=zipfile.ZIP_STORED))  # fmt: skip
    # Set the "encrypted" flag of secret.png in its local header and central directory entry.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.rfind(signature, 0, data.rfind(b"secret.png"))
        data[start + offset] |= 0x1
    upload = SimpleUploadedFile("enc.zip", bytes(data))

    response = alice.post("/api/collections/", {"archive": upload}, format="multipart")

    assert response.status_code == 201, response.json()
    assert response.json()["rejected"] == [
        {"name": "secret.png", "reason": "The file is encrypted; segweb cannot open it."}
    ]


def test_a_member_whose_data_lies_about_its_size_is_rejected_as_damaged(alice):
    data = bytearray(make_zip({"a.png": image_bytes(), "liar.png": COFFEE.read_bytes()}))
    # Shrink liar.png's declared uncompressed size in the central directory: it inflates past it.
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"liar.png"))
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    upload = SimpleUploadedFile("liar.zip", bytes(data))

    response = alice.post("/api/collections/", {"archive": upload}, format="multipart")

    assert response.status_code == 201, response.json()
    assert response.json()["rejected"] == [
        {"name": "liar.png", "reason": "The file is damaged in the archive."}
    ]


# --- archives refused whole, leaving nothing behind -----------------------------------------


def assert_nothing_was_kept(private_storage):
    assert Collection.objects.count() == 0
    assert Job.objects.count() == 0
    assert stored_files(private_storage) == []


def test_a_zip_bomb_is_refused_and_nothing_is_kept(alice, private_storage):
    bomb = {"a.png": COFFEE.read_bytes(), "bomb.bmp": b"\x00" * (50 * 1024 * 1024)}
    response = post_zip(alice, bomb)

    assert response.status_code == 400
    assert "zip bomb" in response.json()["detail"]
    assert_nothing_was_kept(private_storage)
    assert RefusedUploadCount.objects.get(reason="archive_bomb").count == 1


def test_more_uncompressed_bytes_than_the_limit_is_refused(alice, settings, private_storage):
    settings.SEGWEB = {**settings.SEGWEB, "ARCHIVE_MAX_TOTAL_BYTES": 600_000}
    response = post_zip(alice, PHOTOS)  # ~1 MB inflated

    assert response.status_code == 413
    assert "would inflate to" in response.json()["detail"]
    assert_nothing_was_kept(private_storage)


def test_too_many_members_is_refused(alice, settings, private_storage):
    settings.SEGWEB = {**settings.SEGWEB, "ARCHIVE_MAX_MEMBERS": 3}
    members = {f"p{i}.png": image_bytes() for i in range(4)}
    response = post_zip(alice, members)

    assert response.status_code == 400
    assert "at most 3 are accepted" in response.json()["detail"]
    assert_nothing_was_kept(private_storage)


def test_a_central_directory_of_millions_of_entries_is_refused_before_it_is_read(alice, settings):
    settings.SEGWEB = {**settings.SEGWEB, "ARCHIVE_MAX_MEMBERS": 2}
    members = {f"p{i}.txt": b"" for i in range(5)}
    response = post_zip(alice, members)

    assert response.status_code == 400
    assert "The archive has 5 files" in response.json()["detail"]


def test_an_archive_over_the_size_limit_is_refused(alice, settings, private_storage):
    settings.SEGWEB = {**settings.SEGWEB, "ARCHIVE_MAX_BYTES": 10_000}
    response = post_zip(alice, PHOTOS)

    assert response.status_code == 413
    assert "the limit is" in response.json()["detail"]
    assert_nothing_was_kept(private_storage)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip at all", "not a ZIP archive"),
        (COFFEE.read_bytes(), "not a ZIP archive"),
        (make_zip(PHOTOS)[:-30], "not a ZIP archive"),
        (b"", "The archive is empty."),
    ],
)
def test_something_else_than_a_zip_is_refused(alice, private_storage, data, message):
    upload = SimpleUploadedFile("x.zip", data)
    response = alice.post("/api/collections/", {"archive": upload}, format="multipart")

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert_nothing_was_kept(private_storage)


def test_an_archive_without_a_single_photo_is_refused_saying_why(alice, private_storage):
    response = post_zip(alice, {"a.txt": b"hello", "b.zip": make_zip({"c.png": image_bytes()})})

    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("No photo could be accepted")
    assert {r["name"] for r in body["rejected"]} == {"a.txt", "b.zip"}
    assert_nothing_was_kept(private_storage)


def test_a_storage_outage_half_way_leaves_nothing(alice, faulty_storage, private_storage):
    faulty_storage.fail_save = ("thumbnails/",)
    response = post_zip(alice, PHOTOS)

    assert response.status_code == 503
    assert_nothing_was_kept(private_storage)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"score_threshold": "2"}, "score_threshold"), ({"model": "deeplab"}, "deeplab")],
)
def test_bad_options_are_refused_before_the_archive_is_opened(alice, private_storage, fields,
                                                              message):  # fmt: skip
    response = post_zip(alice, PHOTOS, **fields)

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert_nothing_was_kept(private_storage)


# --- several photos in one request ----------------------------------------------------------


def test_several_images_become_one_collection(alice):
    files = [photo_upload(COFFEE), photo_upload(CHELSEA),
             SimpleUploadedFile("notes.jpg", b"text")]  # fmt: skip
    response = alice.post(
        "/api/collections/", {"images": files, "name": "Holiday"}, format="multipart"
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "Holiday"
    assert body["source"] == "upload"
    assert body["progress"]["total"] == 2
    assert [r["name"] for r in body["rejected"]] == ["notes.jpg"]


def test_more_files_than_the_limit_in_one_request_are_refused(alice, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = [SimpleUploadedFile(f"p{i}.png", image_bytes()) for i in range(3)]
    response = alice.post("/api/collections/", {"images": files}, format="multipart")

    assert response.status_code == 400
    assert "At most 2 files" in response.json()["detail"]
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Attach a ZIP"),
        ({"archive": "text"}, "multipart/form-data"),
    ],
)
def test_a_request_without_files_is_refused(alice, data, message):
    response = alice.post("/api/collections/", data, format="multipart")
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_an_archive_and_images_together_are_refused(alice):
    data = {"archive": zip_upload(PHOTOS), "images": [photo_upload()]}
    response = alice.post("/api/collections/", data, format="multipart")
    assert response.status_code == 400
    assert "not both" in response.json()["detail"]
    assert Job.objects.count() == 0


# --- who sees what --------------------------------------------------------------------------


@pytest.fixture
def collection(alice):
    return Collection.objects.get(pk=post_zip(alice, PHOTOS).json()["id"])


def collection_routes(collection) -> list[tuple[str, str]]:
    base = f"/api/collections/{collection.pk}/"
    return [("get", base), ("post", f"{base}cancel/"), ("post", f"{base}retry/"),
            ("delete", base)]  # fmt: skip


def test_anonymous_gets_401_on_every_collection_route(collection):
    anonymous = api_client()
    assert anonymous.get("/api/collections/").status_code == 401
    assert anonymous.post("/api/collections/", {}).status_code == 401
    for method, url in collection_routes(collection):
        assert getattr(anonymous, method)(url).status_code == 401, url


def test_another_users_collection_is_a_404_on_every_route(bob, collection):
    for method, url in collection_routes(collection):
        assert getattr(bob, method)(url).status_code == 404, url
    assert bob.get("/api/collections/").json()["count"] == 0
    assert bob.get(f"/api/jobs/?collection={collection.pk}").json()["count"] == 0
    assert Job.objects.filter(collection=collection, status="queued").count() == 2


def test_staff_can_read_any_collection_but_lists_only_their_own(charlie, collection):
    assert charlie.get(f"/api/collections/{collection.pk}/").status_code == 200
    assert charlie.get("/api/collections/").json()["count"] == 0


# --- progress, cancel, retry, delete --------------------------------------------------------


def test_progress_follows_the_jobs(alice, collection, django_capture_on_commit_callbacks):
    first, second = Job.objects.filter(collection=collection)
    with django_capture_on_commit_callbacks(execute=True):
        succeed(first)
    body = alice.get(f"/api/collections/{collection.pk}/").json()
    assert body["progress"] == {"total": 2, "queued": 1, "running": 0, "done": 1, "failed": 0}
    assert body["finished"] is False
    with django_capture_on_commit_callbacks(execute=True):
        fail(second)
    body = alice.get(f"/api/collections/{collection.pk}/").json()
    assert body["progress"]["failed"] == 1
    assert body["finished"] is True


def test_cancel_fails_queued_jobs_and_leaves_running_ones(alice, collection):
    from segmentation import services

    running, queued = Job.objects.filter(collection=collection)
    services.job_claim(job_id=running.pk)

    response = alice.post(f"/api/collections/{collection.pk}/cancel/")

    assert response.json() == {"count": 1}
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == "failed"
    assert queued.error == "Cancelled by its owner before it ran."
    assert running.status == "running"
    assert services.job_claim(job_id=queued.pk) is None  # its queue message finds nothing to do


def test_cancel_leaves_a_job_a_moderator_hid_alone(alice, collection, staff):
    from segmentation import services

    hidden, other = Job.objects.filter(collection=collection)
    services.job_hide(job=hidden, by=staff, reason="Not a photo for this service.")

    assert alice.post(f"/api/collections/{collection.pk}/cancel/").json() == {"count": 1}
    hidden.refresh_from_db()
    other.refresh_from_db()
    assert (hidden.status, other.status) == ("queued", "failed")  # hidden: the moderator's call


def test_retry_leaves_a_job_a_moderator_hid_alone(
    alice, collection, staff, django_capture_on_commit_callbacks
):
    from segmentation import services

    hidden, other = Job.objects.filter(collection=collection)
    with django_capture_on_commit_callbacks(execute=True):
        fail(hidden)
        fail(other)
    services.job_hide(job=hidden, by=staff, reason="Not a photo for this service.")

    with django_capture_on_commit_callbacks():
        response = alice.post(f"/api/collections/{collection.pk}/retry/")

    assert response.json() == {"count": 1}
    hidden.refresh_from_db()
    other.refresh_from_db()
    assert (hidden.status, other.status) == ("failed", "queued")


def test_retry_queues_the_failed_jobs_again(alice, collection, django_capture_on_commit_callbacks):
    first, second = Job.objects.filter(collection=collection)
    with django_capture_on_commit_callbacks(execute=True):
        fail(first)
        succeed(second)
    assert alice.get(f"/api/collections/{collection.pk}/").json()["finished"] is True

    with django_capture_on_commit_callbacks():
        response = alice.post(f"/api/collections/{collection.pk}/retry/")

    assert response.json() == {"count": 1}
    first.refresh_from_db()
    assert first.status == "queued"
    body = alice.get(f"/api/collections/{collection.pk}/").json()
    assert body["finished"] is False
    assert body["progress"]["queued"] == 1


def test_delete_removes_the_collection_its_jobs_and_files(
    alice, collection, private_storage, django_capture_on_commit_callbacks
):
    job = succeed(Job.objects.filter(collection=collection).first())
    # What the worker also stores: the viewer's preview and the overlay's thumbnail.
    for field in ("preview", "overlay_thumbnail"):
        name = default_storage.save(f"{field}s/{job.pk}.jpg", ContentFile(image_bytes()))
        Job.objects.filter(pk=job.pk).update(**{field: name})
    assert stored_files(private_storage)

    with django_capture_on_commit_callbacks(execute=True):
        response = alice.delete(f"/api/collections/{collection.pk}/")

    assert response.status_code == 204
    assert_nothing_was_kept(private_storage)


def test_refused_photos_are_counted_by_reason(alice):
    alice.post("/api/jobs/", {"image": SimpleUploadedFile("x.png", b"text")}, format="multipart")
    post_zip(alice, {"a.png": image_bytes(), "b.txt": b"text", "c.zip": make_zip({})})

    counts = dict(RefusedUploadCount.objects.values_list("reason", "count"))
    assert counts == {"not_an_image": 2, "archive_member": 1}
