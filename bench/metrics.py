"""What one /metrics scrape costs as the jobs table grows (values are computed at scrape time).

Fills a throwaway SQLite database (or the PostgreSQL of ``DATABASE_URL``) with N finished jobs
and times ``metrics.exposition()``: median of 5 scrapes per size. Figures: docs/benchmarks.md.

    .venv/bin/python bench/metrics.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SEGWEB_DATA_DIR", tempfile.mkdtemp(prefix="segweb-bench-metrics-"))
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")

import django

django.setup()

from django.contrib.auth.models import User
from django.core.management import call_command

from segmentation import metrics
from segmentation.models import Job


def fill(count: int, owner: User) -> None:
    statuses = ["succeeded"] * 8 + ["failed", "queued"]
    rows = [
        Job(
            owner=owner, status=statuses[i % 10], image=f"uploads/x/{i}.jpg",
            original_filename=f"{i}.jpg", image_format="JPEG", image_bytes=1000, width=640,
            height=480, model="yolov7_seg" if i % 3 else "maskrcnn_resnet50_fpn",
            score_threshold=0.5, total_ms=500 + i % 5000, inference_ms=400 + i % 4000,
        )
        for i in range(count)
    ]  # fmt: skip
    Job.objects.bulk_create(rows, batch_size=2000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    have = 0
    for size in sorted(args.sizes):
        fill(size - have, owner)
        have = size
        metrics.exposition()  # warm the database's caches
        times = []
        for _ in range(5):
            started = time.perf_counter()
            body, _ = metrics.exposition()
            times.append(time.perf_counter() - started)
        print(f"{size:>8} jobs: scrape median {statistics.median(times) * 1000:.0f} ms "
              f"({len(body)} bytes)")  # fmt: skip


if __name__ == "__main__":
    main()
