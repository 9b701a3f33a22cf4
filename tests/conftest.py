"""Shared fixtures: the three personas, private storage in a temp dir, photo uploads, the real
YOLOv7-seg model."""

from __future__ import annotations

import io
import ipaddress
import socket
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from tests.photos import CHELSEA, COFFEE
from tests.s3 import s3_storage, seaweedfs  # noqa: F401 - fixtures: a real S3 server

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def private_storage(settings, tmp_path):
    """Every test stores its files in its own folder."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "media", "base_url": None},
        },
    }
    settings.AWS_STORAGE_BUCKET_NAME = ""
    return tmp_path / "media"


@pytest.fixture(autouse=True)
def fresh_rates():
    """Every test starts with a full job rate: user ids repeat from test to test, and every
    upload path counts against the rate."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """No DNS lookups in tests: names other than localhost do not resolve (pytest-socket blocks
    connections, but the resolver talks to the network by itself). Webhook URLs are resolved
    when created; a fuzzed "http://abc/" must not leave the machine."""
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in ("localhost", "", "None") and not _is_address(name):
            raise socket.gaierror(socket.EAI_NONAME, f"DNS is off in tests ({name})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


def _is_address(name: str) -> bool:
    """An IP address in any form the resolver reads without DNS (also "2130706433")."""
    try:
        ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
    except ValueError:
        try:
            socket.inet_aton(name)
        except OSError:
            return False
    return True


class FaultyStorage(FileSystemStorage):
    """Local storage that fails, like a storage outage, for names with the given prefixes."""

    def __init__(self, location, fail_save=(), fail_open=()) -> None:
        super().__init__(location=location)
        self.fail_save, self.fail_open = tuple(fail_save), tuple(fail_open)

    def _save(self, name, content):
        if name.startswith(self.fail_save):
            raise OSError("storage outage")
        return super()._save(name, content)

    def open(self, name, mode="rb"):
        if name.startswith(self.fail_open):
            raise OSError("storage outage")
        return super().open(name, mode)


@pytest.fixture
def faulty_storage(private_storage, monkeypatch):
    """Install a FaultyStorage as the services' storage; set its fail_* prefixes in the test."""
    storage = FaultyStorage(private_storage)
    monkeypatch.setattr("segmentation.services.default_storage", storage)
    return storage


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(
        "charlie", "charlie@example.com", PASSWORD, is_staff=True, is_superuser=True
    )


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def photo_upload(path: Path = COFFEE, name: str | None = None) -> SimpleUploadedFile:
    data = path.read_bytes()
    return SimpleUploadedFile(name or path.name, data, content_type="image/png")


def image_bytes(size=(64, 48), fmt="PNG", mode="RGB", color=(200, 30, 30), **params) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def coffee_upload():
    return photo_upload(COFFEE)


@pytest.fixture
def chelsea_upload():
    return photo_upload(CHELSEA)


@pytest.fixture(scope="session")
def yolo():
    """The real YOLOv7-seg model on the torch runtime, loaded once for the whole run.

    Loading and running it takes seconds on these machines: a test that takes it is marked
    ``slow`` (``make test-fast`` leaves it out).
    """
    from segmentation.inference import load_segmenter  # the engine imports torch only here

    return load_segmenter("yolov7_seg", device="cpu", runtime="torch")
