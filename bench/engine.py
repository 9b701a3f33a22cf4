"""Engine benchmark: load, bare forward, predict, overlay and peak memory, per model and photo.

    python bench/engine.py                 # every usable model (+ Mask R-CNN on random weights)
    python bench/engine.py --repeat 7 --models yolov7_seg

The torch runtime, always: bench/runtime.py compares it with OpenVINO.

"predict" is the whole engine from a JPEG file: decode, EXIF and colour handling, the network, its
post-processing and box-local masks. "forward" is the bare network as its authors run it on the
decoded pixels (for Mask R-CNN: torchvision's model() with its full-image mask paste).
Forward and predict are timed interleaved (forward, predict, forward, ...) so that machine noise
hits both alike; the table gives medians and their ratio. Peak RSS is measured in a fresh process
per model. Mask R-CNN runs on seeded random weights when the real file is absent: its timings are
the same network's, and its 100 low-confidence detections are the worst case for post-processing.
"""

from __future__ import annotations

import argparse
import io
import json
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
from PIL import Image

from bench.common import bare_forward, timed
from tests.photos import ASTRONAUT, COFFEE, MOTORCYCLE

TWELVE_MP = (4224, 2850)


def photos() -> dict[str, Image.Image]:
    from segmentation.inference import load_image

    big = load_image(MOTORCYCLE).resize(TWELVE_MP, Image.Resampling.LANCZOS)
    return {
        "astronaut 512x512": load_image(ASTRONAUT),
        "coffee 600x400": load_image(COFFEE),
        "motorcycle 12 MP": big,
    }


def as_jpeg(image: Image.Image) -> bytes:
    """What a phone uploads: a JPEG file, to be decoded as part of ``predict``'s time."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def random_weights_dir() -> Path:
    import torch

    from tests.inference.conftest import random_maskrcnn

    directory = Path(tempfile.mkdtemp(prefix="segweb-bench-"))
    torch.save(random_maskrcnn().state_dict(), directory / "maskrcnn_resnet50_fpn_coco.pth")
    return directory


def bench_model(name: str, weights_dir: Path | None, repeat: int, threshold: float) -> list[dict]:
    from segmentation.inference import load_image, load_segmenter, render_overlay

    def decode_and_predict(data: bytes) -> list:
        return segmenter.predict(load_image(data), score_threshold=threshold)

    load_s, segmenter = timed(load_segmenter, name, weights_dir=weights_dir, runtime="torch")
    rows = []
    for label, photo in photos().items():
        data = as_jpeg(photo)
        image = load_image(data)  # the bare forward gets the decoded pixels for free
        bare_forward(segmenter, image)  # warm-up: first runs allocate
        forward, predict = [], []
        for _ in range(repeat):
            forward.append(timed(bare_forward, segmenter, image)[0])
            seconds, detections = timed(decode_and_predict, data)
            predict.append(seconds)
        overlay = [timed(render_overlay, image, detections)[0] for _ in range(repeat)]
        rows.append(
            {
                "model": name,
                "photo": label,
                "load_s": load_s,
                "forward_s": statistics.median(forward),
                "predict_s": statistics.median(predict),
                "ratio": statistics.median(p / f for p, f in zip(predict, forward, strict=True)),
                "overlay_s": statistics.median(overlay),
                "detections": len(detections),
            }
        )
        print(_row(rows[-1]), flush=True)
    return rows


def synthetic_detections(size: tuple[int, int], count: int, seed: int = 0) -> list:
    """``count`` elliptical instances of 1-12% of the photo each, like busy street photos."""
    from segmentation.inference import Detection

    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for _ in range(count):
        w = int(width * rng.uniform(0.1, 0.35))
        h = int(height * rng.uniform(0.1, 0.35))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1
        out.append(
            Detection.from_region(
                label="person",
                score=float(rng.uniform(0.5, 1)),
                box=(x0, y0, x0 + w, y0 + h),
                mask=mask,
                origin=(x0, y0),
                image_size=size,
            )
        )
    return out


def seed_style_overlay(image: Image.Image, detections: list) -> np.ndarray:
    """The tutorial's overlay: one full-size colour image and cv2.addWeighted per instance."""
    import cv2

    canvas = np.array(image)
    for det in detections:
        colour_mask = np.zeros_like(canvas)
        colour_mask[det.full_mask()] = (0, 255, 0)
        canvas = cv2.addWeighted(canvas, 1, colour_mask, 0.5, 0)
        x1, y1, x2, y2 = (int(v) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), 3)
        cv2.putText(canvas, det.label, (x1, y1), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 3)
    return canvas


def bench_overlay(repeat: int) -> dict:
    from segmentation.inference import render_overlay

    image = photos()["motorcycle 12 MP"]
    detections = synthetic_detections(image.size, 20)
    ours, seed = [], []
    for _ in range(repeat):
        ours.append(timed(render_overlay, image, detections)[0])
        seed.append(timed(seed_style_overlay, image, detections)[0])
    return {"ours_s": statistics.median(ours), "seed_s": statistics.median(seed)}


def peak_rss(name: str, weights_dir: Path | None, torchvision_paste: bool = False) -> dict:
    """Peak RSS of a fresh process: load the model, predict a 12 MP photo at threshold 0."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from bench.common import bare_forward
from bench.engine import photos
from segmentation.inference import load_segmenter, render_overlay
weights_dir = {str(weights_dir) if weights_dir else None!r}
segmenter = load_segmenter({name!r}, weights_dir=weights_dir and Path(weights_dir), runtime="torch")
image = photos()["motorcycle 12 MP"]
started = time.perf_counter()
if {torchvision_paste!r}:
    out = bare_forward(segmenter, image); count = len(out[0]["scores"])
else:
    detections = segmenter.predict(image, score_threshold=0.0); count = len(detections)
    render_overlay(image, detections)
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
hwm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({{"peak_rss_mb": hwm_kb / 1024,
                  "detections": count, "seconds": elapsed}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['photo']} | {r['load_s']:.1f} | {r['forward_s']:.2f} | "
        f"{r['predict_s']:.2f} | {r['ratio']:.2f} | {r['overlay_s'] * 1000:.0f} | "
        f"{r['detections']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov7_seg,maskrcnn_resnet50_fpn")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    import torch

    from segmentation.inference.registry import model_info

    cpus = len(os.sched_getaffinity(0))
    print(
        f"# segweb engine benchmark — {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{cpus} CPUs, {torch.get_num_threads()} torch threads\n"
    )
    print(
        "| model | photo | load s | forward s | predict s | predict/forward | overlay ms | "
        "detections |\n|---|---|---|---|---|---|---|---|"
    )
    weights = {}
    for name in args.models.split(","):
        usable = model_info(name).usable
        weights[name] = None if usable or name == "yolov7_seg" else random_weights_dir()
        if weights[name]:
            print(f"| {name}: no weights file here, seeded random weights (timing only) |")
        bench_model(name, weights[name], args.repeat, args.threshold)
    overlay = bench_overlay(args.repeat)
    print(
        f"\nOverlay, 20 instances on a 12 MP photo: {overlay['ours_s'] * 1000:.0f} ms "
        f"(seed-style full-image blending: {overlay['seed_s'] * 1000:.0f} ms, "
        f"{overlay['seed_s'] / overlay['ours_s']:.1f}x slower)\n"
    )
    print("| process | peak RSS MB | detections | seconds |\n|---|---|---|---|")
    for name in args.models.split(","):
        r = peak_rss(name, weights[name])
        print(
            f"| {name}, predict + overlay, 12 MP | {r['peak_rss_mb']:.0f} | "
            f"{r['detections']} | {r['seconds']:.2f} |",
            flush=True,
        )
        if name.startswith("maskrcnn"):
            r = peak_rss(name, weights[name], torchvision_paste=True)
            print(
                f"| {name}, torchvision's full-image paste, 12 MP | {r['peak_rss_mb']:.0f} | "
                f"{r['detections']} | {r['seconds']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
