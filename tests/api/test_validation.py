"""One validation for pages and API: every bad upload gets a 4xx with a message, and nothing
is stored; unusual but valid photos are accepted and segmented right."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from segmentation import services
from segmentation.models import Job
from tests.conftest import image_bytes, stored_files
from tests.inference.test_image import png_header
from tests.photos import CHELSEA, ROCKET

pytestmark = pytest.mark.django_db


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def truncated_jpeg() -> bytes:
    data = ROCKET.read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "missing field": ({}, 400, "No image was sent"),
    "empty file": ({"image": upload("a.jpg", b"")}, 400, "empty"),
    "text file": ({"image": upload("a.jpg", b"just some text")}, 400, "not an image"),
    "truncated jpeg": ({"image": upload("a.jpg", truncated_jpeg())}, 400, "damaged or truncated"),
    "png header only": (
        {"image": upload("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30)}, 400, "not an image"),
    "pdf": ({"image": upload("a.pdf", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n")}, 400, "not an image"),
    "icon (a format we refuse)": (
        {"image": upload("a.ico", image_bytes(fmt="ICO"))}, 400, "supported format"),
    "image as a text field": ({"image": "not a file"}, 400, "multipart"),
    "threshold not a number": (
        {"image": upload("a.png", image_bytes()), "score_threshold": "high"}, 400, "number"),
    "threshold above 1": (
        {"image": upload("a.png", image_bytes()), "score_threshold": "1.5"}, 400, "between 0"),
    "threshold below 0": (
        {"image": upload("a.png", image_bytes()), "score_threshold": "-0.1"}, 400, "between 0"),
    "threshold nan": (
        {"image": upload("a.png", image_bytes()), "score_threshold": "nan"}, 400, "between 0"),
    "unknown model": (
        {"image": upload("a.png", image_bytes()), "model": "deeplab"}, 400, "Unknown model"),
    "model without weights": (
        {"image": upload("a.png", image_bytes()), "model": "maskrcnn_resnet50_fpn"}, 400,
        "cannot run here"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_get_a_4xx_with_a_message_and_nothing_is_kept(alice, private_storage, case):
    data, status, message = BAD_UPLOADS[case]
    response = alice.post("/api/jobs/", data, format="multipart")
    assert response.status_code == status, response.content
    assert message.lower() in response.json()["detail"].lower()
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_too_many_bytes_is_a_413(alice, private_storage, settings):
    settings.SEGWEB = {**settings.SEGWEB, "MAX_UPLOAD_BYTES": 2000}
    response = alice.post(
        "/api/jobs/", {"image": upload("a.png", CHELSEA.read_bytes())}, format="multipart"
    )
    assert response.status_code == 413
    assert "limit is 2 KB" in response.json()["detail"]
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_too_many_pixels_is_refused_from_the_header(alice, private_storage, settings):
    settings.SEGWEB = {**settings.SEGWEB, "MAX_PIXELS": 100_000}
    response = alice.post(
        "/api/jobs/", {"image": upload("a.png", CHELSEA.read_bytes())}, format="multipart"
    )
    assert response.status_code == 400
    assert "megapixels" in response.json()["detail"]
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_a_json_body_is_refused_cleanly(alice):
    response = alice.post("/api/jobs/", {"image": "aGVsbG8="}, format="json")
    assert response.status_code == 400
    assert not Job.objects.exists()


def test_an_unsupported_content_type_is_a_415(alice):
    response = alice.generic("POST", "/api/jobs/", b"raw bytes", content_type="text/plain")
    assert response.status_code == 415
    assert not Job.objects.exists()


def test_storage_down_is_a_503_and_leaves_no_row(alice, faulty_storage, private_storage):
    faulty_storage.fail_save = ("uploads/",)
    response = alice.post(
        "/api/jobs/", {"image": upload("a.png", image_bytes())}, format="multipart"
    )
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_a_hostile_filename_is_kept_as_data_only(alice, owner, private_storage):
    response = alice.post(
        "/api/jobs/", {"image": upload("../../etc/x.jpg", image_bytes())}, format="multipart"
    )
    assert response.status_code == 201
    job = Job.objects.get(owner=owner)
    assert job.original_filename == "x.jpg"
    assert stored_files(private_storage) == sorted(
        [f"uploads/{owner.pk}/{job.pk}.png", f"thumbnails/{owner.pk}/{job.pk}.jpg"]
    )


# --- unusual but valid photos, segmented for real -------------------------------------------


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def cat_variants() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """The cat photo in modes and containers that trip up naive code; (bytes, upright size)."""
    cat = Image.open(CHELSEA).convert("RGB")
    gray16 = Image.fromarray(np.asarray(cat.convert("L"), dtype=np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: viewers turn it 90° counter-clockwise... back upright
    rotated = cat.transpose(Image.Transpose.ROTATE_270)
    return {
        "16-bit grayscale PNG": (encoded(gray16, "PNG"), cat.size),
        "CMYK JPEG": (encoded(cat.convert("CMYK"), "JPEG", quality=95), cat.size),
        "palette GIF": (encoded(cat.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), cat.size),
        "RGBA PNG": (encoded(cat.convert("RGBA"), "PNG"), cat.size),
        "EXIF-rotated JPEG": (encoded(rotated, "JPEG", quality=95, exif=exif), cat.size),
        "HEIC": (encoded(cat, "HEIF"), cat.size),
        "WebP": (encoded(cat, "WEBP", quality=90), cat.size),
    }


@pytest.mark.slow
def test_unusual_but_valid_photos_are_accepted_and_segmented_right(alice):
    for name, (data, size) in cat_variants().items():
        response = alice.post("/api/jobs/", {"image": upload("cat", data)}, format="multipart")
        assert response.status_code == 201, (name, response.content)
        job_id = response.json()["id"]
        services.job_run(job_id=job_id)
        job = alice.get(f"/api/jobs/{job_id}/").json()
        assert job["status"] == "succeeded", (name, job["error"])
        assert (job["width"], job["height"]) == size, name
        assert "cat" in job["labels"], name
        box = job["detections"][0]["box"]
        assert box[2] > box[0] and box[3] > box[1], name


HOSTILE_SHAPES = {
    "1x39,000,000 strip": ((1, 39_000_000), "at least 8 pixels"),
    "long strip 30:1": ((3000, 100), "more than 20 times the other"),
    "tiny 4x4": ((4, 4), "at least 8 pixels"),
    "over the pixel limit": ((8000, 8000), "the limit is 40 megapixels"),
    "decompression bomb": ((20000, 20000), "a decompression bomb?); the limit is 40 megapixels"),
}


@pytest.mark.parametrize("case", HOSTILE_SHAPES, ids=list(HOSTILE_SHAPES))
def test_shapes_no_photo_has_are_refused_from_the_header_before_decoding(
    alice, private_storage, monkeypatch, case
):
    (width, height), message = HOSTILE_SHAPES[case]

    def no_decoding(image):
        raise AssertionError("decoded")

    monkeypatch.setattr("segmentation.uploads.decode", no_decoding)
    response = alice.post("/api/jobs/", {"image": upload("x.png", png_header(width, height))})
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert f"{width}×{height}" in response.json()["detail"] or "bomb" in case
    assert not Job.objects.exists()
    assert stored_files(private_storage) == []


def test_a_float32_tiff_becomes_the_right_8_bit_thumbnail(alice):
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (64, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp, mode="F").save(buffer, "TIFF")
    response = alice.post("/api/jobs/", {"image": upload("ramp.tiff", buffer.getvalue())})
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    assert (job.width, job.height, job.image_format) == (256, 64, "TIFF")
    with job.thumbnail.open("rb") as f:
        thumbnail = np.asarray(Image.open(f).convert("L"), dtype=int)
    assert abs(thumbnail[:, 0].mean() - 0) < 6 and abs(thumbnail[:, -1].mean() - 255) < 6
