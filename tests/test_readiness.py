"""/readyz stays bounded: a store or broker that hangs (accepts, never answers) is reported
down within ``health.READY_TIMEOUT``, not after the clients' own minutes-long timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.urls import reverse

from segmentation import health
from tests.s3 import storage_options

pytestmark = pytest.mark.django_db


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_store_that_never_answers_is_reported_down_in_bounded_time(
    client, settings, monkeypatch, silent_server
):
    monkeypatch.setattr(health, "READY_TIMEOUT", 1.0)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": storage_options(f"http://{silent_server}", bucket="segweb"),
    }
    started = time.monotonic()
    response = client.get(reverse("readyz"))
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "no answer in 1 s"
    assert response.json()["checks"]["database"] == "ok"


def test_a_broker_that_never_answers_is_reported_down_in_bounded_time(client, monkeypatch):
    monkeypatch.setattr(health, "READY_TIMEOUT", 1.0)
    hang = threading.Event()
    monkeypatch.setattr(health, "_check_broker", hang.wait)  # waits until the test ends
    started = time.monotonic()
    try:
        response = client.get(reverse("readyz"))
    finally:
        hang.set()
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "no answer in 1 s"
    assert response.json()["checks"]["storage"] == "ok"
