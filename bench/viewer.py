"""The job page's viewer in a real browser (Debian's Chromium, Playwright): a 12 MP photo with 100
instances. Prints the first full draw after the data arrived, the repaint of a slider step and of
a hover (medians), and the bytes the page cost over the wire. Figures: docs/benchmarks.md.

    .venv/bin/python bench/viewer.py [--rounds 5]
    .venv/bin/python bench/viewer.py --screenshots DIR  # crowd photo, real model: desktop, phone
    .venv/bin/python bench/viewer.py --serve            # leave it running to try it by hand

The 100 instances are drawn blobs (the real model finds few objects in the photos that ship
with scikit-image); they go through the worker's real path (``services.job_run``: keep floor,
overlay, preview) with only the model replaced. ``--screenshots`` runs the real model.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import requests
from PIL import Image, ImageFilter

from tests.live import free_port
from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE, PHOTO_DIR

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a-long-bench-passphrase"  # noqa: S105 - a throwaway site's user
LABELS = ["person"] * 45 + ["horse"] * 20 + ["car"] * 15 + ["dog"] * 10 + ["bicycle"] * 10


def crowd_photo(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """A busy composite of real photos (people, cats, cups, a motorbike) at ``size``."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = Image.open(PHOTO_DIR / "rocket.jpg").convert("RGB").resize(size, Image.BICUBIC)
    canvas = background.filter(ImageFilter.GaussianBlur(2))
    sources = [ASTRONAUT] * 6 + [CHELSEA] * 2 + [COFFEE, MOTORCYCLE]
    unit = min(width, height) / 3.2
    for i in range(14):
        src = Image.open(sources[i % len(sources)]).convert("RGB")
        scale = unit * rng.uniform(0.55, 1.0) / max(src.size)
        tile = src.resize((round(src.width * scale), round(src.height * scale)), Image.BICUBIC)
        x = int(rng.uniform(0, width - tile.width))
        y = int(rng.uniform(0, height - tile.height))
        canvas.paste(tile, (x, y))
    noise = rng.normal(0, 4, (height, width, 3))  # a camera's grain, so JPEG sizes are real
    array = np.clip(np.asarray(canvas, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def blobs(image_size: tuple[int, int], count: int = 100, seed: int = 2) -> list:
    """``count`` instance-like masks (wobbly, overlapping), best score first."""
    from segmentation.inference import Detection

    rng = np.random.default_rng(seed)
    width, height = image_size
    scores = sorted(rng.uniform(0.25, 0.99, count), reverse=True)
    out = []
    for label, score in zip(rng.permutation(LABELS)[:count], scores, strict=True):
        w = int(rng.uniform(0.03, 0.14) * width)
        h = int(w * rng.uniform(0.8, 2.2))
        h = min(h, height // 2)
        x0 = int(rng.uniform(0, width - w))
        y0 = int(rng.uniform(0, height - h))
        yy, xx = np.mgrid[0:h, 0:w]
        dx, dy = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
        angle = np.arctan2(dy, dx)
        phase = rng.uniform(0, 2 * math.pi, 3)
        radius = 0.85 + 0.08 * np.sin(3 * angle + phase[0]) + 0.05 * np.sin(7 * angle + phase[1])
        mask = np.hypot(dx, dy) < radius
        out.append(
            Detection.from_region(
                label=str(label),
                score=float(score),
                box=(x0, y0, x0 + w, y0 + h),
                mask=mask,
                origin=(x0, y0),
                image_size=image_size,
            )
        )
    return out


class _Fixed:
    """A stand-in segmenter that returns prepared detections (the bench measures the page)."""

    runtime = "bench"
    precision = "fp32"

    def __init__(self, detections) -> None:
        self.detections = detections

    def predict(self, image, *, score_threshold: float = 0.5):
        return [d for d in self.detections if d.score >= score_threshold]


def setup_site(data_dir: Path, photo: Image.Image, detections=None, threshold=0.5) -> str:
    """Migrate, create alice and one finished job for ``photo``; returns the job's id."""
    os.environ.update(_env(data_dir))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command

    import segmentation.inference as inference
    from segmentation import services

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("alice", password=PASSWORD)
    User.objects.create_user("bob", password=PASSWORD)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    upload = SimpleUploadedFile("crowd.jpg", buffer.getvalue(), content_type="image/jpeg")
    job = services.job_create(owner=user, upload=upload, score_threshold=threshold)
    if detections is not None:
        inference.load_segmenter = lambda name=None, **options: _Fixed(detections)
    services.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return str(job.pk)


def _env(data_dir: Path) -> dict:
    return {
        "DJANGO_SETTINGS_MODULE": "segweb.settings",
        "SEGWEB_DATA_DIR": str(data_dir),
        "DJANGO_SECRET_KEY": "bench-key",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }


def start_web(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, **_env(data_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "segweb.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--threads", "4"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited (port {port} taken?)")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("gunicorn did not start")


def wait_until(page, expression: str, timeout: float = 15.0) -> None:
    """Wait until ``expression`` is truthy in the page. Playwright's ``wait_for_function`` polls
    with ``eval``, which segweb's Content-Security-Policy refuses; ``evaluate`` does not."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {expression}")
        time.sleep(0.02)


def signed_in_page(browser, base: str, viewport=(1280, 900), user="alice", **context):
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, **context)
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", user)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/jobs/")
    return page


def launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run"],
    )  # fmt: skip


MEASURE = """
async () => {
  const v = window.segwebViewer;
  const slider = document.getElementById('threshold');
  const slide = [];
  for (let i = 0; i < 60; i++) {
    const value = (0.3 + (i % 30) * 0.02).toFixed(2);
    const t0 = performance.now();
    slider.value = value;
    slider.dispatchEvent(new Event('input', {bubbles: true}));
    document.body.offsetHeight;  // style and layout of the rows shown or hidden
    slide.push(performance.now() - t0);
    await new Promise(requestAnimationFrame);
  }
  slider.value = '0.25';
  slider.dispatchEvent(new Event('input', {bubbles: true}));
  const stage = document.getElementById('stage');
  const rect = stage.getBoundingClientRect();
  const hover = [];
  for (const inst of v.instances.slice(0, 60)) {
    const [x1, y1, x2, y2] = inst.box;
    const {z, tx, ty} = v.zoom;
    const x = rect.left + tx + (x1 + x2) / 2 * z, y = rect.top + ty + (y1 + y2) / 2 * z;
    const t0 = performance.now();
    stage.dispatchEvent(new PointerEvent('pointermove',
      {clientX: x, clientY: y, pointerType: 'mouse', bubbles: true}));
    document.body.offsetHeight;
    hover.push(performance.now() - t0);
    await new Promise(requestAnimationFrame);
  }
  const s = v.stats;
  return {first: s.firstDrawMs, decode: s.decodeMs, slide, hover, instances: v.instances.length};
}
"""


def measure(browser, base: str, job_id: str) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = signed_in_page(browser, base)
    page.goto(f"{base}/jobs/")  # warm the static files' cache as a returning visitor would not
    page.context.clear_cookies()
    page = signed_in_page(browser, base)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    received: dict[str, int] = {}
    cdp.on(
        "Network.loadingFinished",
        lambda e: received.__setitem__(e["requestId"], e["encodedDataLength"]),
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/jobs/{job_id}/", wait_until="networkidle")
    try:
        wait_until(page, "window.segwebViewer && window.segwebViewer.stats.firstDrawMs")
    except PlaywrightTimeout:
        raise RuntimeError(
            f"the viewer did not start: {errors} {page.url} {page.title()}"
        ) from None
    figures = page.evaluate(MEASURE)
    figures["wire_bytes"] = sum(received.values())
    page.close()
    return figures


def mask_formats(detections, scale: float) -> dict:
    """Bytes of the 100 masks as the page sends them (COCO RLE strings) against the alternative,
    one 1-bit PNG per instance over its box (at full size, and at the viewer's scale)."""
    rle = sum(len(d.rle()["counts"]) for d in detections)
    png_full = png_scaled = 0
    for d in detections:
        mask = Image.fromarray(d.mask).convert("1")
        for target, factor in (("full", 1.0), ("scaled", scale)):
            size = (max(1, round(mask.width * factor)), max(1, round(mask.height * factor)))
            buffer = io.BytesIO()
            mask.resize(size, Image.NEAREST).save(buffer, "PNG", optimize=True)
            if target == "full":
                png_full += len(buffer.getvalue())
            else:
                png_scaled += len(buffer.getvalue())
    return {"rle": rle, "png_full": png_full, "png_scaled": png_scaled}


def overlay_redraw(browser, base: str, job_id: str, rounds: int) -> dict:
    """Seconds to download the overlay right after a threshold change, and once more."""
    page = signed_in_page(browser, base)
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    out: dict[str, list[float]] = {"first": [], "again": []}
    for i in range(rounds):
        threshold = 0.3 + 0.05 * (i % 2)  # a change every round
        page.request.patch(
            f"{base}/api/jobs/{job_id}/",
            data={"score_threshold": threshold},
            headers={"X-CSRFToken": csrf, "Referer": f"{base}/jobs/"},
        )
        for key in ("first", "again"):
            started = time.perf_counter()
            assert page.request.get(f"{base}/jobs/{job_id}/overlay/").ok
            out[key].append(time.perf_counter() - started)
    page.close()
    return out


def bench(rounds: int) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="segweb-viewer-") as tmp:
        data_dir = Path(tmp)
        photo = crowd_photo((4000, 3000))
        detections = blobs(photo.size, 100)
        formats = mask_formats(detections, 1600 / 4000)
        job_id = setup_site(data_dir, photo, detections, threshold=0.25)
        port = free_port()
        web = start_web(data_dir, port)
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                runs = [measure(browser, f"http://127.0.0.1:{port}", job_id) for _ in range(rounds)]
                redraw = overlay_redraw(browser, f"http://127.0.0.1:{port}", job_id, rounds)
                browser.close()
        finally:
            web.terminate()
            web.wait(10)
    first = [r["first"] for r in runs]
    decode = statistics.median(r["decode"] for r in runs)
    wire = statistics.median(r["wire_bytes"] for r in runs)
    print(f"instances: {runs[0]['instances']}; photo 4000x3000; {rounds} page loads")
    print(f"first full draw after the data arrived: median {statistics.median(first):.0f} ms")
    print(f"  runs {[round(x) for x in first]}; of which mask decoding {decode:.0f} ms")
    for name in ("slide", "hover"):
        medians = [statistics.median(r[name]) for r in runs]
        p90 = np.percentile([x for r in runs for x in r[name]], 90)
        print(f"{name} repaint: median {statistics.median(medians):.1f} ms (p90 {p90:.1f} ms)")
    print(f"page over the wire: {wire / 1024:.0f} KiB")
    first_s, again_s = (statistics.median(redraw[k]) for k in ("first", "again"))
    print(
        f"overlay PNG after a threshold change: first download {first_s:.2f} s "
        f"(drawn from the stored masks), the next {again_s:.3f} s"
    )
    print(
        f"masks: COCO RLE in the page {formats['rle'] / 1024:.0f} KiB (uncompressed); one "
        f"PNG per instance {formats['png_full'] / 1024:.0f} KiB at full size, "
        f"{formats['png_scaled'] / 1024:.0f} KiB at the viewer's scale (+ 100 requests)"
    )


POINT_IN_MASK = """rank => {
  const v = window.segwebViewer, inst = v.instances[rank], m = inst.mask;
  const rect = v.stage.getBoundingClientRect();
  for (let y = Math.floor(m.h / 2); y < m.h; y++) for (let x = 0; x < m.w; x++) {
    if (!m.bits[y * m.w + x]) continue;
    const ix = (m.x + x + 0.5) / v.s, iy = (m.y + y + 0.5) / v.s;
    const cx = rect.left + v.zoom.tx + ix * v.zoom.z, cy = rect.top + v.zoom.ty + iy * v.zoom.z;
    if (v.pick(cx, cy) === inst) return [cx, cy];
  }
  return [rect.left + 5, rect.top + 5];
}"""


def screenshots(out: Path) -> None:
    """The crowd photo through the real model: desktop and phone screenshots of the job page."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segweb-shots-") as tmp:
        data_dir = Path(tmp)
        job_id = setup_site(data_dir, crowd_photo((2400, 1600)), None, threshold=0.5)
        port = free_port()
        web = start_web(data_dir, port)
        base = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = signed_in_page(browser, base, (1280, 900))
                page.goto(f"{base}/jobs/{job_id}/", wait_until="networkidle")
                wait_until(page, "window.segwebViewer")
                page.mouse.click(*page.evaluate(POINT_IN_MASK, 0))  # pinned: stays for the shot
                wait_until(page, "window.segwebViewer.pinned !== null")
                page.screenshot(path=out / "job-desktop.png", full_page=True)
                phone = signed_in_page(
                    browser, base, (390, 844), device_scale_factor=2, is_mobile=True, has_touch=True
                )
                phone.goto(f"{base}/jobs/{job_id}/", wait_until="networkidle")
                wait_until(phone, "window.segwebViewer")
                phone.screenshot(path=out / "job-phone.png", full_page=True)
                overlay = page.request.get(f"{base}/jobs/{job_id}/overlay/")
                (out / "overlay.png").write_bytes(overlay.body())
                page.goto(f"{base}/jobs/")
                page.screenshot(path=out / "history.png")
                browser.close()
        finally:
            web.terminate()
            web.wait(10)
    print(f"screenshots in {out}")


def serve() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="segweb-viewer-"))
    photo = crowd_photo((4000, 3000))
    job_id = setup_site(data_dir, photo, blobs(photo.size, 100), threshold=0.5)
    port = free_port()
    web = start_web(data_dir, port)
    print(f"http://127.0.0.1:{port}/jobs/{job_id}/ (alice / {PASSWORD}); Ctrl-C stops", flush=True)
    try:
        web.wait()
    except KeyboardInterrupt:
        web.terminate()


def finish(data_dir: Path, job_id: str, count: int) -> None:
    """Run a queued job of the site in ``data_dir`` through the worker's path, ``count`` blobs
    standing in for the model (the browser tests watch a page update by itself)."""
    os.environ.update(_env(data_dir))
    import django

    django.setup()
    import segmentation.inference as inference
    from segmentation import services
    from segmentation.models import Job

    job = Job.objects.get(pk=job_id)
    detections = blobs((job.width, job.height), count)
    inference.load_segmenter = lambda name=None, **options: _Fixed(detections)
    services.job_run(job_id=job.pk)


def prepare(data_dir: Path, size: tuple[int, int], count: int) -> None:
    """A site in ``data_dir`` with one finished job of ``count`` blobs (the browser tests')."""
    photo = crowd_photo(size)
    print(setup_site(data_dir, photo, blobs(photo.size, count), threshold=0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--screenshots", type=Path)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, default=12, help=argparse.SUPPRESS)
    parser.add_argument("--finish", nargs=2, metavar=("DIR", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finish:
        finish(Path(args.finish[0]), args.finish[1], args.instances)
    elif args.prepare:
        prepare(args.prepare, (960, 640), args.instances)
    elif args.screenshots:
        screenshots(args.screenshots)
    elif args.serve:
        serve()
    else:
        bench(args.rounds)


if __name__ == "__main__":
    main()
