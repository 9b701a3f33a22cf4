"""Memory of a bulk export: the worker's peak RSS while it writes 100 and 1,000 jobs.

    .venv/bin/python bench/export.py [--jobs 100,1000] [--formats coco,coco_polygons,masks]

Each run is a fresh process (SQLite and local files in a temporary directory, no model loaded:
an export never runs one) that creates the jobs, resets the kernel's peak-RSS counter, then runs
``services.export_run`` as the worker does. Jobs are real photos from scikit-image (four,
in turn, 0.3 to 6 MP) with 5 instances each. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024  # MB
    raise RuntimeError(field)


def child(jobs: int, fmt: str) -> None:
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    os.environ["SEGWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="segweb-bench-export-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "segweb.settings"
    for key in ("DATABASE_URL", "AWS_STORAGE_BUCKET_NAME"):
        os.environ.pop(key, None)
    os.environ["SEGWEB_EXPORT_MAX_JOBS"] = str(jobs)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.files.storage import default_storage
    from django.core.management import call_command

    from segmentation import services
    from segmentation.inference import inspect_image
    from segmentation.models import Job
    from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE

    call_command("migrate", verbosity=0)
    owner = get_user_model().objects.create_user("alice")
    photos = []
    for path in (ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE):
        info = inspect_image(path)
        name = default_storage.save(f"uploads/{path.name}", open(path, "rb"))  # noqa: SIM115
        photos.append((name, info, path.stat().st_size))
    for n in range(jobs):
        name, info, size = photos[n % len(photos)]
        job = Job.objects.create(
            owner=owner, status="running", image=name, original_filename=f"photo{n}.png",
            image_format=info.format, image_bytes=size, width=info.width, height=info.height,
            model="yolov7_seg", score_threshold=0.5, kept_min_score=0.25, attempts=1,
        )  # fmt: skip
        services.job_succeed(job=job, detections=_blobs(info.width, info.height, n),
                             overlay="", runtime="torch", inference_ms=1, total_ms=1)  # fmt: skip
    export = services.export_create(owner=owner, format=fmt, filters={})
    Path("/proc/self/clear_refs").write_text("5")  # the peak counter starts again here
    before = _status("VmRSS")
    started = time.perf_counter()
    services.export_run(export_id=export.pk)
    seconds = time.perf_counter() - started
    export.refresh_from_db()
    assert export.status == "succeeded", export.error
    print(json.dumps({
        "jobs": jobs, "format": fmt, "rss_before_mb": before, "peak_mb": _status("VmHWM"),
        "seconds": round(seconds, 1), "zip_mb": round(export.size_bytes / 1e6, 1),
    }))  # fmt: skip


def _blobs(width: int, height: int, seed: int) -> list:
    import numpy as np

    from segmentation.inference import Detection

    rng = np.random.default_rng(seed)
    out = []
    for i, label in enumerate(("person", "person", "dog", "car", "cup")):
        w, h = int(width * rng.uniform(0.1, 0.4)), int(height * rng.uniform(0.1, 0.4))
        x0, y0 = int(rng.uniform(0, width - w)), int(rng.uniform(0, height - h))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 < 1
        out.append(Detection.from_region(
            label=label, score=0.9 - i * 0.05, box=(x0, y0, x0 + w, y0 + h), mask=mask,
            origin=(x0, y0), image_size=(width, height),
        ))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="100,1000")
    parser.add_argument("--formats", default="coco,coco_polygons,masks")
    parser.add_argument("--child", nargs=2, metavar=("JOBS", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(int(args.child[0]), args.child[1])
        return 0
    print("| format | jobs | RSS before MB | peak RSS MB | seconds | ZIP MB |")
    print("|---|---|---|---|---|---|")
    for fmt in args.formats.split(","):
        for jobs in (int(n) for n in args.jobs.split(",")):
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(jobs), fmt],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode:
                print(result.stderr[-3000:])
                return 1
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {fmt} | {jobs} | {r['rss_before_mb']} | {r['peak_mb']} | {r['seconds']} "
                  f"| {r['zip_mb']} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
