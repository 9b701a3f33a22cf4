"""A 200-photo ZIP through segweb as `make run` serves it: time to accept, peak web memory,
time until every job is done.

Starts segweb on its embedded defaults (tests/live.py: gunicorn 2 processes x 4 threads and one
Celery worker, SQLite, local files), warms the worker's model with one photo, then sends one ZIP
of N distinct camera-sized JPEGs (scikit-image's photos, scaled up) to POST /api/collections/.
Web memory is the resident size of the gunicorn processes, sampled every 20 ms during the
upload, and their kernel-recorded peak (VmHWM) at the end. Figures: docs/benchmarks.md.

    .venv/bin/python bench/collection.py [--photos 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import requests
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live import PASSWORD, running_segweb
from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE, ROCKET

SOURCES = [COFFEE, CHELSEA, ASTRONAUT, MOTORCYCLE, ROCKET]


def make_zip(count: int, path: Path) -> dict:
    """``count`` distinct JPEGs the size of a camera's (each source photo scaled up to 2.4-6.5
    megapixels), stored in the ZIP as cameras' JPEGs are (deflate gains nothing on them)."""
    sources = [Image.open(p).convert("RGB") for p in SOURCES]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            image = sources[i % len(sources)]
            scale = 3.0 + 2.0 * ((i * 7) % 11) / 10
            size = (int(image.width * scale), int(image.height * scale))
            buffer = io.BytesIO()
            image.resize(size).save(buffer, "JPEG", quality=90)
            archive.writestr(f"shoot/img_{i:04d}.jpg", buffer.getvalue())
    return {"photos": count, "zip_mb": round(path.stat().st_size / 2**20, 1)}


def gunicorn_pids(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gunicorn" in cmdline and f":{port}" in cmdline:
            pids.append(int(entry.name))
    return pids


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak_kb, self.stop = pids, dict.fromkeys(pids, 0), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for pid in self.pids:
                with contextlib.suppress(OSError):  # a process that just ended
                    self.peak_kb[pid] = max(self.peak_kb[pid], status_kb(pid, "VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segweb-bench-") as scratch:
        root = Path(scratch)
        archive = root / "shoot.zip"
        figures = make_zip(args.photos, archive)
        data_dir = root / "data"
        data_dir.mkdir()
        env = {"SEGWEB_JOB_CREATE_RATE": "1000/min", "SEGWEB_ARCHIVE_MAX_FILES": "1000"}
        with running_segweb(data_dir, **env) as base:
            port = int(base.rsplit(":", 1)[1])
            session = requests.Session()
            # gunicorn closes idle keep-alive connections after 2 s: polls retry the race.
            retry = Retry(total=5, backoff_factor=0.5, allowed_methods={"GET"})
            session.mount("http://", HTTPAdapter(max_retries=retry))
            credentials = {"username": "alice", "password": PASSWORD}
            token = session.post(f"{base}/api/auth/token/", data=credentials).json()["token"]
            session.headers["Authorization"] = f"Token {token}"
            with COFFEE.open("rb") as f:  # the worker loads its model on this one
                warm = session.post(f"{base}/api/jobs/", files={"image": f}).json()["url"]
            while session.get(warm).json()["status"] not in ("succeeded", "failed"):
                time.sleep(0.5)
            pids = gunicorn_pids(port)
            before = {pid: status_kb(pid, "VmRSS") for pid in pids}
            sampler = RssSampler(pids)
            sampler.start()
            started = time.perf_counter()
            with archive.open("rb") as f:
                response = session.post(
                    f"{base}/api/collections/",
                    files={"archive": ("shoot.zip", f, "application/zip")},
                    data={"model": "yolov7_seg"},
                    timeout=900,
                )
            accepted = time.perf_counter() - started
            sampler.stop.set()
            sampler.join()
            assert response.status_code == 201, response.text[:500]
            print(f"accepted in {accepted:.1f} s", file=sys.stderr, flush=True)
            body = response.json()
            url = body["url"]
            while not body["finished"]:
                time.sleep(2)
                body = session.get(url).json()
            done = time.perf_counter() - started
            hwm = {pid: status_kb(pid, "VmHWM") for pid in pids}
        figures.update(
            accepted_s=round(accepted, 1),
            accepted_per_photo_ms=round(accepted / args.photos * 1000),
            done_s=round(done, 1),
            photos_per_minute=round(args.photos / done * 60, 1),
            progress=body["progress"],
            rejected=len(body["rejected"]),
            web_rss_before_mb=[round(v / 1024) for v in before.values()],
            web_rss_peak_during_upload_mb=[round(v / 1024) for v in sampler.peak_kb.values()],
            web_vmhwm_mb=[round(v / 1024) for v in hwm.values()],
        )
    figures["load_average_1min_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
