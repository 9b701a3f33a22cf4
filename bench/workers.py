"""Which Celery pool for CPU workers: prefork or threads, how many processes and torch threads.

Runs the real stack (tests/scale/stack.py: gunicorn, Celery, PostgreSQL, Redis, SeaweedFS) once
per configuration, queues the same photos, and prints jobs/min and the worker's memory. Needs
PostgreSQL and Redis (SEGWEB_TEST_POSTGRES_URL, SEGWEB_TEST_REDIS_URL). Figures:
docs/benchmarks.md (Scale-out stack).

    .venv/bin/python bench/workers.py [--jobs 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.photos import COFFEE
from tests.s3 import SeaweedFS
from tests.scale.stack import Stack, TemporaryDatabase, postgres_unavailable, redis_unavailable

# (label, pool, concurrency, torch or OpenVINO threads per process) on a 2-core machine.
CONFIGS = [
    ("prefork x2, 1 thread each", "prefork", 2, 1),
    ("threads x2, 1 thread", "threads", 2, 1),
    ("prefork x1, 2 threads", "prefork", 1, 2),
    ("threads x2, 2 threads", "threads", 2, 2),
]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return total / 1024


def run(label, pool, concurrency, threads, jobs, seaweedfs, root) -> dict:
    database = TemporaryDatabase()
    database.create()
    threads_env = {"SEGWEB_TORCH_THREADS": str(threads), "SEGWEB_OPENVINO_THREADS": str(threads)}
    stack = Stack(root, database=database, s3_env=seaweedfs.environment(), **threads_env)
    try:
        stack.prepare()
        stack.start_web()
        stack.start_worker("w1", pool=pool, concurrency=concurrency)
        stack.wait_for_workers("w1")
        session = stack.api()
        warm = stack.submit(session, COFFEE).json()["id"]  # loads the model(s) first
        stack.wait_for_job(session, warm)
        if pool == "prefork" and concurrency > 1:  # let every child warm up
            for job_id in [stack.submit(session, COFFEE).json()["id"] for _ in range(3)]:
                stack.wait_for_job(session, job_id)
        started = time.time()
        ids = [stack.submit(session, COFFEE).json()["id"] for _ in range(jobs)]
        done = [stack.wait_for_job(session, job_id, timeout=900) for job_id in ids]
        assert all(j["status"] == "succeeded" for j in done), [j["error"] for j in done]
        last = max(datetime.fromisoformat(j["finished_at"]).timestamp() for j in done)
        return {
            "config": label,
            "runtime": done[0]["runtime"],  # OpenVINO where `make export` ran, else torch
            "jobs_per_minute": round(jobs / (last - started) * 60, 1),
            "worker_rss_mb": round(tree_rss_mb(stack.processes["w1"].pid)),
        }
    finally:
        stack.stop()
        database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for reason in (postgres_unavailable(), redis_unavailable()):
        if reason:
            sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="segweb-bench-") as tmp:
        seaweedfs = SeaweedFS(Path(tmp) / "s3")
        seaweedfs.start()
        try:
            results: dict[str, list[dict]] = {}
            for round_ in range(args.rounds):  # interleaved, so that noise hits every config
                for n, (label, pool, concurrency, threads) in enumerate(CONFIGS):
                    root = Path(tmp) / f"stack-{round_}-{n}"
                    root.mkdir()
                    result = run(label, pool, concurrency, threads, args.jobs, seaweedfs, root)
                    print(result, flush=True)
                    results.setdefault(label, []).append(result)
        finally:
            seaweedfs.stop()
    print("\n| configuration | jobs/min (median) | runs | worker RSS, summed |")
    print("|---|---|---|---|")
    for label, runs in results.items():
        rates = [r["jobs_per_minute"] for r in runs]
        rss = max(r["worker_rss_mb"] for r in runs)
        print(f"| {label} | {statistics.median(rates):.1f} | {rates} | {rss} MB |")


if __name__ == "__main__":
    main()
