"""History at scale: the history page and the job list API at 10k and at 100k jobs.

Prints, per request, the median and p95 answer time at each size and the ratio of the p95s
(target: at most 1.5, and under 50 ms at the large size). Figures: docs/benchmarks.md.

    .venv/bin/python bench/history.py                    # SQLite, 10k and 100k jobs
    .venv/bin/python bench/history.py --database postgres://postgres@127.0.0.1:5432/postgres

Half of the jobs belong to the user who asks ("alice"), the rest to 50 others. Each job has 0
to 7 kept instances (classes drawn as in a photo collection: person in most, rare classes in
few) with scores from 0.25, thresholds mostly 0.5; 95% succeeded, some failed or waiting, a few
hidden by a moderator. Rows are inserted in bulk, then the per-job class counts and per-user
summary are built by the same code the migration uses. The databases are kept under
``var/bench-history/`` (SQLite) or as ``segweb_bench_<size>`` (PostgreSQL) and reused.

Requests go through Django's test client in this process (middleware, session, templates,
serializers: everything but the socket), in rounds that alternate the sizes, so that a busy
machine slows both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "var" / "bench-history"
SCHEMA = "4"  # bump when the generated data changes shape
OWNER = "alice"
OTHERS = 50

#: A photo collection's classes: weights roughly as in COCO's own images (person everywhere).
CLASS_WEIGHTS = {
    "person": 40, "car": 8, "chair": 6, "cup": 5, "dog": 4, "cat": 4, "bottle": 4, "bicycle": 3,
    "dining table": 3, "handbag": 2, "truck": 2, "bird": 2, "horse": 1.5, "boat": 1.5,
    "traffic light": 1.5, "umbrella": 1.2, "bench": 1.2, "potted plant": 1.2, "book": 1.2,
    "clock": 1, "sheep": 0.8, "cow": 0.8, "elephant": 0.5, "zebra": 0.4, "giraffe": 0.4,
    "kite": 0.4, "skis": 0.3, "toaster": 0.05, "hair drier": 0.03, "bear": 0.2,
}  # fmt: skip


def configure(database: str | None) -> None:
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ["SEGWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="segweb-bench-history-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "segweb.settings"
    if database:
        os.environ["DATABASE_URL"] = database
    else:
        os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


def use_database(size: int) -> None:
    """Point the default connection at the database of ``size`` jobs (created if missing)."""
    from django.db import connections

    connection = connections["default"]
    connection.close()
    if connection.vendor == "sqlite":
        DATA.mkdir(parents=True, exist_ok=True)
        connection.settings_dict["NAME"] = str(DATA / f"jobs-{size}-v{SCHEMA}.sqlite3")
    else:
        name = f"segweb_bench_{size}_v{SCHEMA}"
        base = dict(connection.settings_dict)
        connection.settings_dict["NAME"] = "postgres"
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        connection.settings_dict.update(base, NAME=name)


def ensure_data(size: int, seed: int = 7) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    User = get_user_model()
    if User.objects.filter(username=OWNER).exists():
        return
    started = time.perf_counter()
    generate(size, seed)
    print(f"  generated {size} jobs in {time.perf_counter() - started:.0f} s", flush=True)


def generate(size: int, seed: int) -> None:
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from segmentation.models import Detection, Job

    rng = np.random.default_rng(seed)
    User = get_user_model()
    owner = User.objects.create_user(OWNER, password="bench-password")  # noqa: S106
    others = [User.objects.create_user(f"user{i}") for i in range(OTHERS)]
    labels = list(CLASS_WEIGHTS)
    weights = np.array(list(CLASS_WEIGHTS.values()), dtype=float)
    weights /= weights.sum()
    rle = {"size": [480, 640], "counts": "0ma9"}  # all masks alike: lists never decode them
    created_field = Job._meta.get_field("created_at")
    created_field.auto_now_add = False  # bulk rows carry their own dates
    start = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(days=700) / size
    batch = 5000
    try:
        for first in range(0, size, batch):
            jobs, detections = [], []
            for n in range(first, min(size, first + batch)):
                mine = n % 2 == 0
                roll = rng.random()
                status = "succeeded" if roll < 0.95 else "failed" if roll < 0.98 else "queued"
                threshold = 0.5 if rng.random() < 0.8 else float(rng.choice([0.3, 0.4, 0.6, 0.7]))
                job = Job(
                    owner=owner if mine else others[n % OTHERS],
                    status=status,
                    image=f"uploads/x/{n}.jpg",
                    thumbnail=f"thumbnails/x/{n}.jpg",
                    overlay_thumbnail=f"overlays/x/{n}-small.jpg" if status == "succeeded" else "",
                    original_filename=f"IMG_{n:06d}.jpg",
                    image_format="JPEG",
                    image_bytes=2_000_000,
                    width=640,
                    height=480,
                    model="yolov7_seg",
                    runtime="torch" if status == "succeeded" else "",
                    score_threshold=threshold,
                    kept_min_score=min(0.25, threshold),
                    overlay_threshold=threshold if status == "succeeded" else None,
                    created_at=start + step * n,
                    hidden=rng.random() < 0.005,
                )
                jobs.append(job)
                if status != "succeeded":
                    continue
                count = int(rng.choice(8, p=[0.08, 0.25, 0.22, 0.16, 0.12, 0.08, 0.05, 0.04]))
                scores = sorted(rng.uniform(0.25, 0.99, count), reverse=True)
                for rank, (label, score) in enumerate(
                    zip(rng.choice(labels, count, p=weights), scores, strict=True)
                ):
                    detections.append(
                        Detection(
                            job=job,
                            rank=rank,
                            label=str(label),
                            score=float(score),
                            x1=10,
                            y1=10,
                            x2=50,
                            y2=60,
                            area=1500,
                            rle=rle,
                        )
                    )
            with transaction.atomic():
                Job.objects.bulk_create(jobs)
                Detection.objects.bulk_create(detections, batch_size=2000)
    finally:
        created_field.auto_now_add = True
    rebuild = _summary_rebuilder()
    if rebuild is not None:
        rebuild()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    else:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def _summary_rebuilder():
    from segmentation import services

    return getattr(services, "class_counts_rebuild", None)  # None before issue 12


def scenarios(size: int) -> dict[str, str]:
    """The requests measured, by name. Deep pages: 80% of the way through the history."""
    mine = size // 2
    page_deep = max(1, int(mine / 24 * 0.8))
    api_deep = max(1, int(mine / 20 * 0.8))
    return {
        "page": "/jobs/",
        "page ?label=dog": "/jobs/?label=dog",
        "page ?has=person:2 dog": "/jobs/?has=person%3A2+dog",
        "page, 80% deep": f"/jobs/?page={page_deep}",
        "api": "/api/jobs/",
        "api ?label=dog": "/api/jobs/?label=dog",
        "api ?has=person:2&has=dog": "/api/jobs/?has=person%3A2&has=dog",
        "api ?has=bear (rare)": "/api/jobs/?has=bear",
        "api, 80% deep": f"/api/jobs/?page={api_deep}",
        "api ?has=dog&min_score=0.8": "/api/jobs/?has=dog&min_score=0.8",
    }


def measure(sizes: list[int], rounds: int, per_round: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client

    clients = {}
    for size in sizes:
        use_database(size)
        client = Client()
        client.force_login(get_user_model().objects.get(username=OWNER))
        clients[size] = client
    samples: dict = {size: {name: [] for name in scenarios(size)} for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            use_database(size)
            client = clients[size]
            for name, url in scenarios(size).items():
                for _ in range(per_round):
                    started = time.perf_counter()
                    response = client.get(url)
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code != 200:
                        raise SystemExit(f"{url}: {response.status_code} {response.content[:300]}")
                    samples[size][name].append(elapsed)
    return samples


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def report(sizes: list[int], samples: dict) -> bool:
    small, large = sizes[0], sizes[-1]
    print(
        f"\n| request | median {small // 1000}k ms | p95 {small // 1000}k ms | "
        f"median {large // 1000}k ms | p95 {large // 1000}k ms | p95 ratio |"
    )
    print("|---|---|---|---|---|---|")
    ok = True
    for name in samples[small]:
        a, b = samples[small][name], samples[large][name]
        ratio = p95(b) / p95(a)
        target = "min_score" in name or (ratio <= 1.5 and p95(b) < 50)
        ok &= target
        print(
            f"| {name} | {statistics.median(a):.1f} | {p95(a):.1f} | {statistics.median(b):.1f} "
            f"| {p95(b):.1f} | {ratio:.2f}{'' if target else ' ✗'} |"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="job counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=3, help="requests per round")
    parser.add_argument("--database", help="a PostgreSQL URL (default: SQLite files)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    configure(args.database)
    from django.db import connection

    for size in sizes:
        use_database(size)
        print(f"{connection.vendor}: {size} jobs ({size // 2} the user's)", flush=True)
        ensure_data(size)
    samples = measure(sizes, args.rounds, args.per_round)
    ok = report(sizes, samples)
    print(
        f"\n{args.rounds} rounds x {args.per_round} requests per size and request, sizes "
        f"alternating; targets: p95 ratio <= 1.5 and p95 < 50 ms at {sizes[-1]} jobs "
        "(min_score is reported, not a target)."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
