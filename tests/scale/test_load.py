"""Load: 40 photos from 8 concurrent API clients, through gunicorn, Redis, Celery, PostgreSQL, S3.

Every accepted job must succeed with a readable overlay, and no request may get a 5xx. The
figures (throughput, submit latency) are printed and written to ``$SEGWEB_SCALE_REPORT`` when set;
docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import threading
import time
from datetime import datetime

import requests
from PIL import Image

from segmentation import services
from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE, ROCKET

PHOTOS = [COFFEE, CHELSEA, ASTRONAUT, MOTORCYCLE, ROCKET]
CLIENTS = 8
PER_CLIENT = 5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_readyz_checks_postgresql_redis_and_s3(stack):
    response = requests.get(f"{stack.base}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert checks == {"database": "ok", "storage": "ok", "broker": "ok", "models": "ok"}


def test_forty_uploads_from_eight_clients_all_succeed(stack, seaweedfs, capsys):
    sessions = [stack.api() for _ in range(CLIENTS)]
    submitted: list[tuple[float, int, dict]] = []  # latency, status, body
    lock = threading.Lock()
    start_gate = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        start_gate.wait()
        for n in range(PER_CLIENT):
            photo = PHOTOS[(index * PER_CLIENT + n) % len(PHOTOS)]
            began = time.perf_counter()
            response = stack.submit(sessions[index], photo)
            latency = time.perf_counter() - began
            body = response.json() if response.headers.get("Content-Type", "").startswith(
                "application/json"
            ) else {"text": response.text[:300]}  # fmt: skip
            with lock:
                submitted.append((latency, response.status_code, body))

    started = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submit_seconds = time.time() - started

    statuses = [status for _, status, _ in submitted]
    assert not [s for s in statuses if s >= 500], (statuses, stack.log("web"))
    accepted = [body for _, status, body in submitted if status == 201]
    assert len(accepted) == CLIENTS * PER_CLIENT, statuses

    session = sessions[0]
    ids = {body["id"] for body in accepted}

    def all_finished():
        page = session.get(f"{stack.base}/api/jobs/", params={"page_size": 100}, timeout=30).json()
        mine = {job["id"]: job for job in page["results"] if job["id"] in ids}
        done = [j for j in mine.values() if j["status"] in ("succeeded", "failed")]
        return mine if len(done) == len(ids) else None

    jobs = stack.wait_until(all_finished, 600, "all 40 jobs to finish", interval=1)
    failed = {i: j["status"] for i, j in jobs.items() if j["status"] != "succeeded"}
    assert not failed, (failed, stack.log("w1"), stack.log("w2"))

    for job_id in ids:
        detail = session.get(f"{stack.base}/api/jobs/{job_id}/", timeout=30)
        assert detail.status_code == 200
        job = detail.json()
        assert "X-Amz-Expires=300" in job["overlay_url"]  # a signed S3 URL, for 5 minutes
        overlay = requests.get(job["overlay_url"], timeout=30)  # no token: the URL is the key
        assert overlay.status_code == 200, overlay.text[:300]
        assert Image.open(io.BytesIO(overlay.content)).size == (job["width"], job["height"])

    last_finish = max(datetime.fromisoformat(j["finished_at"]).timestamp() for j in jobs.values())
    latencies = [latency for latency, _, _ in submitted]
    figures = {
        "jobs": len(ids),
        "clients": CLIENTS,
        "wall_seconds": round(last_finish - started, 1),
        "jobs_per_minute": round(len(ids) / (last_finish - started) * 60, 1),
        "submit_seconds": round(submit_seconds, 1),
        "submit_p50_ms": round(statistics.median(latencies) * 1000),
        "submit_p95_ms": round(percentile(latencies, 0.95) * 1000),
        "submit_max_ms": round(max(latencies) * 1000),
        "status_codes": sorted(set(statuses)),
    }
    with capsys.disabled():
        print(f"\nload: {json.dumps(figures)}")
    if report := os.environ.get("SEGWEB_SCALE_REPORT"):
        with open(report, "a") as f:
            f.write(json.dumps({"test": "load", **figures}) + "\n")

    # Deleting a job through the API deletes every object it stored.
    job_id = next(iter(ids))

    def objects_of_job() -> list[str]:
        return [key for key in seaweedfs.object_keys() if job_id in key]

    assert len(objects_of_job()) == len(services.JOB_FILE_FIELDS)  # photo, overlay, previews
    assert session.delete(f"{stack.base}/api/jobs/{job_id}/", timeout=30).status_code == 204
    assert objects_of_job() == []
