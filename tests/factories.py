"""Jobs in every state, made through the services (the same path production takes)."""

from __future__ import annotations

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from segmentation import services
from segmentation.inference import Detection as Found
from segmentation.models import Job
from tests.conftest import image_bytes, photo_upload


def token_for(user) -> str:
    """A new API token of this user (what POST /api/auth/token/ gives a client)."""
    _, key = services.user_token_create(user=user)
    return key


def create_job(owner, upload=None, *, threshold=0.5, model="yolov7_seg") -> Job:
    return services.job_create(
        owner=owner, upload=upload or photo_upload(), score_threshold=threshold, model=model
    )


def found(label: str, score: float, job: Job, x0=10, y0=10, size=20) -> Found:
    mask = np.zeros((size, size), dtype=bool)
    mask[2:-2, 2:-2] = True
    return Found.from_region(
        label=label,
        score=score,
        box=(x0, y0, x0 + size, y0 + size),
        mask=mask,
        origin=(x0, y0),
        image_size=(job.width, job.height),
    )


def succeed(job: Job, labels=("cup", "spoon")) -> Job:
    claimed = services.job_claim(job_id=job.pk)
    overlay = default_storage.save(
        f"overlays/{job.owner_id}/{job.pk}.png", ContentFile(image_bytes())
    )
    detections = [found(label, 0.9 - i * 0.1, job) for i, label in enumerate(labels)]
    services.job_succeed(
        job=claimed, detections=detections, overlay=overlay, runtime="torch",
        inference_ms=1234, total_ms=1500,
    )  # fmt: skip
    job.refresh_from_db()
    return job


def fail(job: Job, message="The model could not run.") -> Job:
    claimed = services.job_claim(job_id=job.pk)
    services.job_fail(job=claimed, message=message)
    job.refresh_from_db()
    return job


class NothingFound:
    """A model that runs at once and finds nothing: the worker's whole path without a network."""

    runtime = "torch"
    precision = "fp32"

    def predict(self, image, score_threshold):
        return []


def model_finds_nothing(monkeypatch) -> None:
    monkeypatch.setattr("segmentation.inference.load_segmenter", lambda name, **kw: NothingFound())


def api_client(user=None):
    """An API client, signed in with a token of ``user``'s when one is given."""
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client
