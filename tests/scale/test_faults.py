"""Faults on real processes: workers killed mid-job, the broker and the file store going away.

What must hold: no job is left queued or running for ever, no request gets a 500, nothing is
half-saved, and everything works again once the service is back. Recovery times are printed (and
appended to ``$SEGWEB_SCALE_REPORT``): docs/benchmarks.md quotes them. The stack runs with
shortened recovery settings (``tests.scale.stack.FAST_RECOVERY``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.photos import ASTRONAUT, COFFEE
from tests.scale.stack import FAST_RECOVERY, Stack

STALE_AFTER = float(FAST_RECOVERY["SEGWEB_STALE_AFTER_SECONDS"])
SWEEP = float(FAST_RECOVERY["SEGWEB_SWEEP_INTERVAL_SECONDS"])
REQUEUE_AFTER = float(FAST_RECOVERY["SEGWEB_REQUEUE_AFTER_SECONDS"])
STORE_DOWN = "The file store is unavailable; try again shortly."


def report(capsys, test: str, **figures) -> None:
    with capsys.disabled():
        print(f"\n{test}: {json.dumps(figures)}")
    if path := os.environ.get("SEGWEB_SCALE_REPORT"):
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **figures}) + "\n")


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    """A 12-megapixel JPEG: several seconds in a worker, time enough to kill it mid-job."""
    path = tmp_path_factory.mktemp("photos") / "astronaut-12mp.jpg"
    with Image.open(ASTRONAUT) as image:
        image.convert("RGB").resize((4000, 3000)).save(path, quality=90)
    return path


def running_job(stack: Stack, session, photo: Path) -> tuple[str, int]:
    """Submit a photo and wait until a worker runs it; return the job id and the worker's pid."""
    response = stack.submit(session, photo)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    def started():
        row = stack.job_row(job_id)
        return row if row["status"] == "running" and row["worker"] else None

    row = stack.wait_until(started, 120, f"job {job_id} to start", interval=0.05)
    return job_id, int(row["worker"].rsplit(":", 1)[1])


def kill_mid_job(stack: Stack, session, photo: Path, *, whole_node: bool):
    """SIGKILL the process running a job (or its whole worker node) while the job runs.

    Retried when the job happened to finish before the signal landed.
    """
    for _ in range(3):
        job_id, pid = running_job(stack, session, photo)
        node = stack.node_of(pid)
        if whole_node:
            stack.kill(node, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        if stack.job_row(job_id)["status"] == "running":
            return job_id, node, killed_at
        if whole_node:
            stack.start_worker(node)
            stack.wait_for_workers(node)
    pytest.fail("the job always finished before the worker could be killed")


def test_a_job_whose_worker_process_is_killed_is_run_again(stack, big_photo, capsys):
    session = stack.api()
    job_id, node, killed_at = kill_mid_job(stack, session, big_photo, whole_node=False)

    job = stack.wait_for_job(session, job_id, timeout=STALE_AFTER + 4 * SWEEP + 120)
    recovered = time.monotonic() - killed_at

    row = stack.job_row(job_id)
    assert job["status"] == "succeeded", (job["error"], stack.log(node))
    assert row["attempts"] == 2
    report(capsys, "worker process killed", recovery_seconds=round(recovered, 1),
           attempts=row["attempts"], status=job["status"])  # fmt: skip


def test_a_job_whose_whole_worker_node_dies_is_taken_by_another(stack, big_photo, capsys):
    session = stack.api()
    job_id, node, killed_at = kill_mid_job(stack, session, big_photo, whole_node=True)
    try:
        job = stack.wait_for_job(session, job_id, timeout=STALE_AFTER + 4 * SWEEP + 120)
        recovered = time.monotonic() - killed_at
        row = stack.job_row(job_id)
        assert job["status"] == "succeeded", job["error"]
        assert stack.node_of(int(row["worker"].rsplit(":", 1)[1])) != node
        report(capsys, "worker node killed", recovery_seconds=round(recovered, 1),
               attempts=row["attempts"], status=job["status"])  # fmt: skip
    finally:
        stack.start_worker(node)
        stack.wait_for_workers(node)


def test_uploads_during_a_broker_outage_are_kept_and_run_when_it_returns(stack, capsys):
    session = stack.api()
    stack.proxy.cut()
    cut_at = time.monotonic()
    try:
        began = time.monotonic()
        ready = session.get(f"{stack.base}/readyz", timeout=30)
        readyz_seconds = time.monotonic() - began
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] != "ok"
        assert ready.json()["checks"]["storage"] == ready.json()["checks"]["database"] == "ok"

        latencies, ids = [], []
        for _ in range(3):
            began = time.monotonic()
            response = stack.submit(session, COFFEE)
            latencies.append(time.monotonic() - began)
            assert response.status_code == 201, response.text  # stored and queued: not lost
            ids.append(response.json()["id"])
        for job_id in ids:
            row = stack.job_row(job_id)
            assert row["status"] == "queued"
            assert row["enqueued_at"] is None  # the sweep publishes it once the broker is back
        time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))  # a 10-second outage
    finally:
        stack.proxy.restore()
    restored_at = time.monotonic()

    jobs = [stack.wait_for_job(session, job_id, timeout=180) for job_id in ids]
    recovered = time.monotonic() - restored_at
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    stack.wait_until(lambda: stack._answers("/readyz"), 30, "readyz to be green again")
    report(capsys, "broker outage (10 s)", submit_seconds=[round(x, 2) for x in latencies],
           readyz_seconds=round(readyz_seconds, 1),
           all_done_after_restore_seconds=round(recovered, 1))  # fmt: skip


def test_jobs_whose_messages_the_broker_lost_are_published_again(stack, capsys):
    """Redis restarted without persistence: queued messages are gone, the jobs are not."""
    session = stack.api()
    for node in ("w1", "w2"):
        stack.kill(node, signal.SIGTERM)
    try:
        ids = []
        for _ in range(2):
            response = stack.submit(session, COFFEE)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        assert all(stack.job_row(job_id)["enqueued_at"] for job_id in ids)  # published...
        assert stack.delete_queued_messages() > 0  # ...and lost
        lost_at = time.monotonic()
    finally:
        for node in ("w1", "w2"):
            stack.start_worker(node)
        stack.wait_for_workers("w1", "w2")

    jobs = [stack.wait_for_job(session, job_id, timeout=REQUEUE_AFTER + 120) for job_id in ids]
    recovered = time.monotonic() - lost_at
    assert [job["status"] for job in jobs] == ["succeeded"] * 2, [j["error"] for j in jobs]
    assert recovered >= REQUEUE_AFTER - 1  # published again by the sweep, not found by chance
    report(capsys, "broker lost its messages", requeue_after_seconds=REQUEUE_AFTER,
           all_done_after_loss_seconds=round(recovered, 1))  # fmt: skip


def test_a_storage_outage_refuses_uploads_cleanly_and_fails_jobs_it_strands(
    stack, seaweedfs, capsys
):
    session = stack.api()
    before = stack.job_count()
    done = stack.submit(session, COFFEE).json()["id"]
    assert stack.wait_for_job(session, done)["status"] == "succeeded"
    # A job stored while the broker is cut stays queued; its photo then becomes unreadable.
    stack.proxy.cut()
    stranded = stack.submit(session, COFFEE).json()["id"]
    seaweedfs.stop()
    try:
        stack.proxy.restore()
        began = time.monotonic()
        refused = stack.submit(session, COFFEE)
        refused_seconds = time.monotonic() - began
        assert refused.status_code == 503
        assert refused.json()["detail"] == STORE_DOWN
        assert stack.job_count() == before + 2  # the refused upload left no row

        ready = session.get(f"{stack.base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"] != "ok"

        job = stack.wait_for_job(session, stranded, timeout=120)
        assert job["status"] == "failed"
        assert job["error"] == "The uploaded photo could not be read from storage."
    finally:
        seaweedfs.start()
    back_at = time.monotonic()

    stack.wait_until(lambda: stack._answers("/readyz"), 60, "readyz to be green again")
    response = stack.submit(session, COFFEE)
    assert response.status_code == 201, response.text
    job = stack.wait_for_job(session, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    recovered = time.monotonic() - back_at
    earlier = session.get(f"{stack.base}/api/jobs/{done}/", timeout=30).json()
    assert session.get(earlier["overlay_url"], timeout=30).status_code == 200  # kept
    report(capsys, "storage outage", upload_503_seconds=round(refused_seconds, 2),
           new_job_done_after_restart_seconds=round(recovered, 1))  # fmt: skip


def test_no_request_got_a_server_error(stack):
    """Across every fault above, the only 5xx were the intended 503s: uploads refused while the
    store was down, and /readyz saying what was down."""
    access_log = stack.log("web", chars=10_000_000)
    answers = re.findall(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) ', access_log)
    assert len(answers) > 50
    server_errors = {(m, p, s) for m, p, s in answers if s.startswith("5")}
    assert server_errors <= {("POST", "/api/jobs/", "503"), ("GET", "/readyz", "503")}
