"""Collections, webhooks and /metrics on the production stack: gunicorn with two processes, two
Celery worker nodes and beat, on PostgreSQL, Redis and S3.

/metrics must give the same numbers whichever gunicorn process answers, and they must be the
database's, however many processes ran the jobs; webhooks are delivered by the workers, signed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
import zipfile

import requests

from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE
from tests.scale.stack import METRICS_TOKEN
from tests.test_webhooks import Receiver


def scrape(base: str) -> dict[str, float]:
    # A new connection each time, so that both gunicorn processes get to answer.
    response = requests.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text[:300]
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }


def test_a_zip_collection_with_webhooks_and_metrics_across_processes(stack, seaweedfs):
    receiver = Receiver()
    try:
        session = stack.api()
        hook = session.post(
            f"{stack.base}/api/webhooks/",
            json={"url": receiver.url, "events": ["job.finished", "collection.finished"]},
            timeout=30,
        )
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            for photo in (COFFEE, CHELSEA, ASTRONAUT, MOTORCYCLE):
                z.write(photo, f"shoot/{photo.name}")
            z.writestr("shoot/readme.txt", "not a photo")
        response = session.post(
            f"{stack.base}/api/collections/",
            files={"archive": ("shoot.zip", archive.getvalue())},
            data={"model": "yolov7_seg"},
            timeout=120,
        )
        assert response.status_code == 201, response.text
        collection = response.json()
        assert collection["progress"]["total"] == 4
        assert [r["name"] for r in collection["rejected"]] == ["shoot/readme.txt"]

        def finished():
            body = session.get(collection["url"], timeout=30).json()
            return body if body["finished"] else None

        done = stack.wait_until(finished, 600, "the collection to finish", interval=1)
        assert done["progress"]["done"] == 4, (done, stack.log("w1"), stack.log("w2"))
        stack.wait_until(lambda: len(receiver.requests) >= 5, 60, "5 webhook deliveries")
    finally:
        receiver.close()

    events = sorted(json.loads(r["body"])["event"] for r in receiver.requests)
    assert events == ["collection.finished"] + ["job.finished"] * 4
    for request in receiver.requests:
        expected = hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Segweb-Signature"] == f"sha256={expected}"

    truth = dict(stack.database.query(
        "SELECT status, count(*) FROM segmentation_job GROUP BY status"))  # fmt: skip
    scrapes = [scrape(stack.base) for _ in range(8)]
    for values in scrapes:
        succeeded = sum(v for k, v in values.items()
                        if k.startswith("segweb_jobs{") and 'status="succeeded"' in k)  # fmt: skip
        assert succeeded == truth["succeeded"]
        duration_count = sum(v for k, v in values.items()
                             if k.startswith("segweb_job_duration_seconds_count"))  # fmt: skip
        assert duration_count == truth["succeeded"]
        assert values['segweb_webhook_attempts{outcome="success"}'] >= 5
        assert values['segweb_uploads_refused_total{reason="not_an_image"}'] >= 1
    stable = [{k: v for k, v in s.items() if "oldest_age" not in k} for s in scrapes]
    assert all(s == stable[0] for s in stable)

    # Deleting the collection deletes its jobs' objects in S3.
    sql = "SELECT id::text FROM segmentation_job WHERE collection_id = %s"
    ids = [row[0] for row in stack.database.query(sql, collection["id"])]
    assert session.delete(collection["url"], timeout=30).status_code == 204
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        job_id in key for key in seaweedfs.object_keys() for job_id in ids
    ):
        time.sleep(0.5)
    assert not [key for key in seaweedfs.object_keys() if any(i in key for i in ids)]
