"""Worker throughput: jobs per minute for a 50-photo collection with torch, OpenVINO FP32 and
OpenVINO INT8, each in every worker layout (processes x threads), and each pool process's peak
memory.

Runs the real stack (tests/scale/stack.py: gunicorn, Celery, PostgreSQL, Redis, SeaweedFS) once
per configuration, queues the 50 photos at once after a warm-up, and prints jobs/min and the
worker's memory. Needs PostgreSQL and Redis (SEGWEB_TEST_POSTGRES_URL, SEGWEB_TEST_REDIS_URL)
and the photos of ``bench.common.unseen_photos`` (opencv-doc). Figures: docs/benchmarks.md.

    .venv/bin/python bench/workers.py [--rounds 2] [--runtimes torch,fp32,int8]

YOLOv7-seg; its FP32 and INT8 exports are made first (in the weights directory) if needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from itertools import cycle, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import unseen_photos
from tests.photos import COFFEE
from tests.s3 import SeaweedFS
from tests.scale.stack import Stack, TemporaryDatabase, postgres_unavailable, redis_unavailable

#: (label, Celery pool, processes, threads per process) on a 2-core machine.
LAYOUTS = [
    ("2 processes x 1 thread", "prefork", 2, 1),
    ("1 process x 2 threads", "prefork", 1, 2),
]
RUNTIMES = {
    "torch": {"SEGWEB_RUNTIME": "torch", "SEGWEB_PRECISION": "fp32"},
    "fp32": {"SEGWEB_RUNTIME": "openvino", "SEGWEB_PRECISION": "fp32"},
    "int8": {"SEGWEB_RUNTIME": "openvino", "SEGWEB_PRECISION": "int8"},
}
COLLECTION = 50


def pool_memory_mb(pid: int) -> tuple[float, float]:
    """(summed RSS now, largest peak RSS of one process) over a worker node's processes."""
    total, peak, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text().splitlines()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        kb = {k: int(line.split()[1]) for line in status for k in ("VmRSS", "VmHWM")
              if line.startswith(f"{k}:")}  # fmt: skip
        total += kb.get("VmRSS", 0)
        peak = max(peak, kb.get("VmHWM", 0))
        todo.extend(int(c) for c in children)
    return total / 1024, peak / 1024


def collection(folder: Path) -> list[Path]:
    """50 photos: the unseen real photos, in turn, as the files a user would upload."""
    photos = list(unseen_photos().values())
    if not photos:
        sys.exit("no photos: apt-get install opencv-doc (see bench/common.py)")
    paths = []
    for n, source in enumerate(islice(cycle(photos), COLLECTION)):
        target = folder / f"{n:02d}-{source.name}"
        shutil.copyfile(source, target)
        paths.append(target)
    return paths


def run(layout, runtime, photos, weights, seaweedfs, root) -> dict:
    label, pool, processes, threads = layout
    database = TemporaryDatabase()
    database.create()
    env = {
        "SEGWEB_TORCH_THREADS": str(threads),
        "SEGWEB_OPENVINO_THREADS": str(threads),
        "SEGWEB_WEIGHTS_DIR": str(weights),
        "SEGWEB_AUTO_EXPORT": "0",
        **RUNTIMES[runtime],
    }
    stack = Stack(root, database=database, s3_env=seaweedfs.environment(), **env)
    try:
        stack.prepare()
        stack.start_web()
        stack.start_worker("w1", pool=pool, concurrency=processes)
        stack.wait_for_workers("w1")
        session = stack.api()
        # Warm every pool process up (model loaded, first shapes compiled) before timing.
        warm = [stack.submit(session, COFFEE).json()["id"] for _ in range(2 * processes)]
        for job_id in warm:
            stack.wait_for_job(session, job_id, timeout=600)
        started = time.time()
        ids = [stack.submit(session, photo).json()["id"] for photo in photos]
        done = [stack.wait_for_job(session, job_id, timeout=1800) for job_id in ids]
        assert all(j["status"] == "succeeded" for j in done), [j["error"] for j in done]
        last = max(datetime.fromisoformat(j["finished_at"]).timestamp() for j in done)
        rss, peak = pool_memory_mb(stack.processes["w1"].pid)
        ran = {(j["runtime"], j["precision"]) for j in done}
        return {
            "runtime": runtime,
            "layout": label,
            "ran": sorted(ran),
            "jobs_per_minute": round(len(ids) / (last - started) * 60, 1),
            "worker_rss_mb": round(rss),
            "peak_rss_per_process_mb": round(peak),
        }
    finally:
        stack.stop()
        database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", default="torch,fp32,int8")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    for reason in (postgres_unavailable(), redis_unavailable()):
        if reason:
            sys.exit(reason)
    from segmentation.inference.catalog import default_weights_dir
    from segmentation.inference.export import export_model

    weights = default_weights_dir()
    for precision in ("fp32", "int8"):
        export_model("yolov7_seg", weights_dir=weights, precision=precision, echo=print)
    print(f"# bench/workers.py — {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="segweb-bench-") as tmp:
        photos = collection(Path(tmp))
        seaweedfs = SeaweedFS(Path(tmp) / "s3")
        seaweedfs.start()
        try:
            for round_ in range(args.rounds):  # interleaved, so that noise hits every config
                for n, layout in enumerate(LAYOUTS):
                    for runtime in runtimes:
                        root = Path(tmp) / f"stack-{round_}-{runtime}-{n}"
                        root.mkdir()
                        result = run(layout, runtime, photos, weights, seaweedfs, root)
                        print(result, flush=True)
                        results.setdefault((runtime, layout[0]), []).append(result)
        finally:
            seaweedfs.stop()
    print(
        f"\nload at the end {os.getloadavg()[0]:.1f}\n\n"
        "| runtime | layout | jobs/min (median) | runs | peak RSS of one worker process | "
        "worker RSS, summed |\n|---|---|---|---|---|---|"
    )
    for (runtime, layout), runs in results.items():
        rates = [r["jobs_per_minute"] for r in runs]
        peak = max(r["peak_rss_per_process_mb"] for r in runs)
        rss = max(r["worker_rss_mb"] for r in runs)
        print(
            f"| {runtime} | {layout} | {statistics.median(rates):.1f} | {rates} | {peak} MB | "
            f"{rss} MB |"
        )


if __name__ == "__main__":
    main()
