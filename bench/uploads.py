"""Hostile uploads against the web process: four at once, peak RSS and CPU per file.

Prints, for each batch of four uploads sent together, the web process's peak RSS above what it
held before the batch, and for each file its answer and the CPU time its request thread used.
Targets (issue 10): four hostile uploads raise the peak by at most 300 MB, and no file costs
more than a second of CPU. Figures: docs/benchmarks.md.

    .venv/bin/python bench/uploads.py [--rounds 3]

The hostile files, made once in a temporary folder:

- a float32 TIFF, 6300×6300 (39.7 MP, just under the limit), deflated to a few hundred KB;
- a 1×39,000,000 grey PNG (76 KB): the shape no photo has;
- a 16-bit grey PNG, 6300×6300;
- a decompression bomb: a 20000×20000 PNG of one colour (400 MP) in 400 KB.

The baseline is four 12 MP JPEGs (a phone photo: a shipped photo scaled up) in the same run.

Each batch runs in a fresh Python process (so that memory one batch's allocator kept cannot
hide the next batch's), through Django's test client in four threads posting to
``POST /api/jobs/`` (the path the upload page's script uses): middleware, authentication,
validation, storage, the database. The peak is the kernel's high-water mark (``VmHWM``),
reset before the batch through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOSTILE = {
    "float32 TIFF 6300×6300": "float32.tiff",
    "PNG 1×39,000,000": "strip.png",
    "16-bit PNG 6300×6300": "gray16.png",
    "PNG bomb 20000×20000": "bomb.png",
}
PHOTOS = {f"12 MP JPEG #{i}": f"photo{i}.jpg" for i in range(1, 5)}


# --- the files --------------------------------------------------------------------------------


def make_files(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    from tests.photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET

    for i, source in enumerate((ASTRONAUT, CHELSEA, COFFEE, ROCKET), start=1):
        photo = Image.open(source).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        photo.save(folder / f"photo{i}.jpg", quality=90)
    side = 6300
    values = np.zeros((side, side), dtype=np.float32)
    values[::97, :] = np.linspace(-3.0, 40.0, side, dtype=np.float32)  # a range to stretch
    Image.fromarray(values, mode="F").save(
        folder / "float32.tiff", compression="tiff_adobe_deflate"
    )
    del values
    (folder / "strip.png").write_bytes(png(1, 39_000_000, depth=8, row=b"\0\x80"))
    row16 = b"\0" + (np.arange(side, dtype=">u2") * 10).tobytes()
    (folder / "gray16.png").write_bytes(png(side, side, depth=16, row=row16))
    (folder / "bomb.png").write_bytes(png(20_000, 20_000, depth=8, row=b"\0" * 20_001))


def png(width: int, height: int, *, depth: int, row: bytes) -> bytes:
    """A grey PNG whose every row is ``row`` (filter byte included), deflated as it goes."""
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


# --- one batch, in its own process ----------------------------------------------------------


def configure(data_dir: str) -> None:
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ["SEGWEB_DATA_DIR"] = data_dir
    os.environ["SEGWEB_JOB_CREATE_RATE"] = "10000/min"
    os.environ.pop("DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "segweb.settings"
    import django

    django.setup()


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_batch(folder: Path, names: dict[str, str]) -> dict:
    import gc

    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("alice")
    clients = []
    for _ in names:
        client = Client()
        client.force_login(user)
        clients.append(client)
    # Warm up: imports and first-request costs are not the files' doing.
    warm = SimpleUploadedFile("warm.jpg", (folder / "photo1.jpg").read_bytes())
    assert clients[0].post("/api/jobs/", {"image": warm}).status_code == 201
    data = {label: (folder / name).read_bytes() for label, name in names.items()}
    results: dict[str, dict] = {}
    start = threading.Barrier(len(names))

    def send(client, label: str) -> None:
        upload = SimpleUploadedFile(names[label], data[label])
        start.wait()
        cpu = time.thread_time()
        wall = time.perf_counter()
        response = client.post("/api/jobs/", {"image": upload})
        results[label] = {
            "bytes": len(data[label]),
            "status": response.status_code,
            "detail": "" if response.status_code == 201 else response.json()["detail"][:90],
            "cpu_s": time.thread_time() - cpu,
            "wall_s": time.perf_counter() - wall,
        }

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = memory_kb("VmRSS")
    threads = [
        threading.Thread(target=send, args=(c, label))
        for c, label in zip(clients, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"peak_mb": (memory_kb("VmHWM") - before) / 1024, "files": results}


# --- the report -------------------------------------------------------------------------------


def batch(folder: Path, kind: str) -> dict:
    env = {**os.environ, "SEGWEB_DATA_DIR": tempfile.mkdtemp(prefix="segweb-bench-uploads-")}
    out = subprocess.run(
        [sys.executable, __file__, "--batch", kind, "--files", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", choices=["photos", "hostile"], help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch:
        configure(os.environ["SEGWEB_DATA_DIR"])
        names = HOSTILE if args.batch == "hostile" else PHOTOS
        print(json.dumps(run_batch(Path(args.files), names)))
        return

    with tempfile.TemporaryDirectory(prefix="segweb-bench-files-") as tmp:
        folder = Path(tmp)
        make_files(folder)
        peaks: dict[str, list[float]] = {"photos": [], "hostile": []}
        files: dict[str, dict] = {}
        for _ in range(args.rounds):  # alternating, so that a busy machine slows both alike
            for kind in ("photos", "hostile"):
                result = batch(folder, kind)
                peaks[kind].append(result["peak_mb"])
                for label, figures in result["files"].items():
                    seen = files.setdefault(label, {**figures, "cpu": []})
                    seen["cpu"].append(figures["cpu_s"])
        print(f"SEGWEB_DECODE_SLOTS={os.environ.get('SEGWEB_DECODE_SLOTS', '2 (default)')}, "
              f"{args.rounds} rounds\n")  # fmt: skip
        print("| batch of four at once | peak RSS increase (max of rounds) |")
        print("|---|---|")
        for kind, label in (("photos", "12 MP JPEGs (baseline)"), ("hostile", "hostile files")):
            print(f"| {label} | {max(peaks[kind]):.0f} MB |")
        print("\n| file | size | answer | CPU per request (max of rounds) |")
        print("|---|---|---|---|")
        for label, seen in files.items():
            answer = f"{seen['status']} {seen['detail']}".strip()
            size = f"{seen['bytes'] / 1024:.0f} KB"
            print(f"| {label} | {size} | {answer} | {max(seen['cpu']):.2f} s |")


if __name__ == "__main__":
    main()
