"""Runtime benchmark: torch vs OpenVINO (FP32, and INT8 for YOLOv7-seg) vs the seed-style
pipeline, interleaved in one run.

    python bench/runtime.py                          # Mask R-CNN and YOLOv7-seg
    python bench/runtime.py --models yolov7_seg --repeat 7 --skip-memory

Per photo, the pipelines run in turn (seed, torch, openvino, int8, seed, torch, ...) so that
machine noise hits them alike; tables give medians and the median of per-round ratios.

- forward: the network alone, same work in both runtimes (Mask R-CNN: transform + network at
  torchvision's 0.05 threshold, no paste; YOLO: letterbox + network).
- end to end: decode the photo file, predict, render the overlay.
- seed-style (Mask R-CNN): decode, eager torchvision with its full-image mask paste, the
  tutorial's full-image overlay (``bench.engine.seed_style_overlay``).
- agreement: ``compare_detections`` between torch's and OpenVINO FP32's answers; for INT8, the
  share of torch's instances it reproduces (``agreement.Reproduction``).
- load and memory: a fresh process per runtime loads the model, then segments ``--sizes`` photos
  of different sizes; peak RSS is VmHWM from /proc/self/status (ru_maxrss would include the
  parent's, which Linux carries across fork + exec).

Mask R-CNN runs on the seeded random weights of the tests unless its real weights file is in the
weights directory; the random weights and their exports are kept in var/bench-weights/.
"""

from __future__ import annotations

import argparse
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

from PIL import Image

from bench.common import bare_forward, network_only, timed
from bench.engine import TWELVE_MP, seed_style_overlay
from tests.photos import ASTRONAUT, COFFEE, MOTORCYCLE

MASKRCNN = "maskrcnn_resnet50_fpn"
YOLOV7 = "yolov7_seg"
THRESHOLDS = {MASKRCNN: 0.3, YOLOV7: 0.5}  # random Mask R-CNN weights score ~0.2-0.5


#: Models benchmarked at INT8 too.
INT8_MODELS = (YOLOV7,)


def weights_dir_for(models: list[str]) -> Path:
    """The weights directory to benchmark with, every model in it exported (no-op if current)."""
    import torch

    from segmentation.inference.catalog import WEIGHTS_FILES, default_weights_dir
    from segmentation.inference.export import export_model
    from segmentation.inference.registry import model_info

    directory = default_weights_dir()
    if MASKRCNN in models and not model_info(MASKRCNN, weights_dir=directory).usable:
        from tests.inference.conftest import random_maskrcnn

        directory = ROOT / "var" / "bench-weights"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / WEIGHTS_FILES[MASKRCNN]
        if not path.is_file():
            torch.save(random_maskrcnn().state_dict(), path)
        print(f"(no {WEIGHTS_FILES[MASKRCNN]}: Mask R-CNN runs on seeded random weights)")
    for name in models:
        for precision in ("fp32", "int8") if name in INT8_MODELS else ("fp32",):
            export_model(
                name,
                weights_dir=directory,
                precision=precision,
                echo=lambda line: print(f"export: {line}"),
            )
    return directory


def photo_files(folder: Path) -> dict[str, Path]:
    """The benchmark photos as files, so that decoding is part of end to end."""
    from segmentation.inference import load_image

    motorcycle = load_image(MOTORCYCLE)
    files = {"astronaut 512x512 PNG": ASTRONAUT, "coffee 600x400 PNG": COFFEE}
    for label, size in (("2 MP JPEG", (1728, 1152)), ("12 MP JPEG", TWELVE_MP)):
        path = folder / f"{label.split()[0]}.jpg"
        motorcycle.resize(size, Image.Resampling.LANCZOS).save(path, quality=92)
        files[f"motorcycle {label}"] = path
    return files


def end_to_end(segmenter, path: Path, threshold: float) -> list:
    from segmentation.inference import load_image, render_overlay

    image = load_image(path)
    detections = segmenter.predict(image, score_threshold=threshold)
    render_overlay(image, detections)
    return detections


def seed_style(segmenter, path: Path, threshold: float) -> list:
    """The pipeline segweb started from: torchvision's output as is, full-image masks."""
    from segmentation.inference import Detection, load_image
    from segmentation.inference.coco import TORCHVISION_CATEGORIES

    image = load_image(path)
    result = bare_forward(segmenter, image)[0]
    detections = [
        Detection.from_region(
            label=TORCHVISION_CATEGORIES[int(label)],
            score=float(score),
            box=tuple(box.tolist()),
            mask=(mask[0] > 0.5).numpy(),
            origin=(0, 0),
            image_size=image.size,
        )
        for box, label, score, mask in zip(
            result["boxes"], result["labels"], result["scores"], result["masks"], strict=True
        )
        if score >= threshold
    ]
    seed_style_overlay(image, detections)
    return detections


def bench_photos(name: str, weights_dir: Path, repeat: int, folder: Path) -> list[dict]:
    from segmentation.inference import load_image, load_segmenter
    from segmentation.inference.agreement import Agreement, Reproduction, compare_detections

    threshold = THRESHOLDS[name]
    runtimes = {
        "torch": load_segmenter(name, device="cpu", weights_dir=weights_dir, runtime="torch"),
        "openvino": load_segmenter(
            name, device="cpu", weights_dir=weights_dir, runtime="openvino", precision="fp32"
        ),
    }
    if name in INT8_MODELS:
        runtimes["int8"] = load_segmenter(
            name, device="cpu", weights_dir=weights_dir, runtime="openvino", precision="int8"
        )
    for key, segmenter in runtimes.items():
        expected = "torch" if key == "torch" else "openvino"
        assert segmenter.runtime == expected, f"{key}: the export is missing or stale"
    assert "int8" not in runtimes or runtimes["int8"].precision == "int8"
    rows = []
    for label, path in photo_files(folder).items():
        image = load_image(path)
        pipelines = {
            key: (lambda p=path, s=segmenter: end_to_end(s, p, threshold))
            for key, segmenter in runtimes.items()
        }
        if name == MASKRCNN:
            pipelines["seed"] = lambda p=path: seed_style(runtimes["torch"], p, threshold)
        for pipeline in pipelines.values():  # warm-up: first runs allocate, OpenVINO compiles
            pipeline()
        for segmenter in runtimes.values():
            network_only(segmenter, image)
        forward = {rt: [] for rt in runtimes}
        e2e = {p: [] for p in pipelines}
        answers = {}
        for _ in range(repeat):
            for rt, segmenter in runtimes.items():
                forward[rt].append(timed(network_only, segmenter, image)[0])
            for key, pipeline in pipelines.items():
                seconds, answers[key] = timed(pipeline)
                e2e[key].append(seconds)
        agreement = Agreement()
        problems = compare_detections(
            answers["torch"], answers["openvino"], threshold=threshold, agreement=agreement
        )
        row = {
            "model": name,
            "photo": label,
            "detections": len(answers["openvino"]),
            "agree": not problems,
            "agreement": agreement.as_dict(),
        }
        for rt in runtimes:
            row[f"forward_{rt}_s"] = statistics.median(forward[rt])
            row[f"e2e_{rt}_s"] = statistics.median(e2e[rt])
            if rt != "torch":
                row[f"forward_{rt}_speedup"] = _ratio(forward["torch"], forward[rt])
                row[f"e2e_{rt}_speedup"] = _ratio(e2e["torch"], e2e[rt])
        if "int8" in answers:
            reproduction = Reproduction()
            reproduction.add(answers["torch"], answers["int8"])
            row["int8_reproduction"] = reproduction.as_dict()
        if "seed" in e2e:
            row["e2e_seed_s"] = statistics.median(e2e["seed"])
            row["e2e_speedup_vs_seed"] = _ratio(e2e["seed"], e2e["openvino"])
        rows.append(row)
        print(_photo_row(row), flush=True)
    return rows


def _ratio(baseline: list[float], candidate: list[float]) -> float:
    """The median of per-round ratios (each round ran both, one right after the other)."""
    return statistics.median(b / c for b, c in zip(baseline, candidate, strict=True))


def _photo_row(r: dict) -> str:
    seed = (
        f"{r['e2e_seed_s']:.2f} \\| {r['e2e_speedup_vs_seed']:.2f}x" if "e2e_seed_s" in r else "–"
    )
    a = r["agreement"]
    agree = (
        f"{'yes' if r['agree'] else 'NO'} ({a['detections']}, |Δscore| ≤ "
        f"{a['max_score_delta']:.0e}, mask IoU ≥ {a['min_mask_iou']:.3f})"
    )
    if "int8_reproduction" in r:
        q = r["int8_reproduction"]
        int8 = (
            f"{r['forward_int8_s']:.2f} | {r['forward_int8_speedup']:.2f}x | "
            f"{r['e2e_int8_s']:.2f} | {r['e2e_int8_speedup']:.2f}x | "
            f"{q['reproduced']}/{q['reference']}, +{q['extra']}"
        )
    else:
        int8 = "– | – | – | – | –"
    return (
        f"| {r['model']} | {r['photo']} | {r['forward_torch_s']:.2f} | "
        f"{r['forward_openvino_s']:.2f} | {r['forward_openvino_speedup']:.2f}x | "
        f"{r['e2e_torch_s']:.2f} | {r['e2e_openvino_s']:.2f} | "
        f"{r['e2e_openvino_speedup']:.2f}x | {agree} | {int8} | {seed} |"
    )


_MEMORY_CODE = """
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from PIL import Image
from segmentation.inference import load_image, load_segmenter, render_overlay
from tests.photos import MOTORCYCLE

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024

started = time.perf_counter()
segmenter = load_segmenter({name!r}, device="cpu", weights_dir=Path({weights!r}),
                           runtime={runtime!r})
load_s = time.perf_counter() - started
assert segmenter.runtime == {runtime!r}, segmenter.runtime
after_load = status("VmRSS")
source = load_image(MOTORCYCLE)
rng = np.random.default_rng(0)
sizes = set()
while len(sizes) < {count}:  # distinct sizes from 0.1 to 12 MP, both orientations
    megapixels = rng.uniform(0.1, 12)
    aspect = rng.uniform(0.5, 2.0)
    w = int((megapixels * 1e6 * aspect) ** 0.5)
    sizes.add((w, int(megapixels * 1e6 / w)))
started = time.perf_counter()
for size in sorted(sizes, key=lambda s: rng.random()):
    image = source.resize(size, Image.Resampling.BILINEAR)
    render_overlay(image, segmenter.predict(image, score_threshold={threshold}))
print(json.dumps({{"load_s": load_s, "rss_after_load_mb": after_load,
                  "rss_end_mb": status("VmRSS"), "peak_rss_mb": status("VmHWM"),
                  "seconds_per_photo": (time.perf_counter() - started) / {count}}}))
"""


def memory(name: str, weights_dir: Path, runtime: str, count: int, **env: str) -> dict:
    """Load time and memory of a fresh worker-like process that segments ``count`` sizes."""
    code = _MEMORY_CODE.format(
        root=str(ROOT),
        name=name,
        weights=str(weights_dir),
        runtime=runtime,
        count=count,
        threshold=THRESHOLDS[name],
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{MASKRCNN},{YOLOV7}")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, default=50, help="photo sizes in the memory run")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    models = args.models.split(",")

    import torch

    from segmentation.inference.ov import ov
    from segmentation.inference.runtime import openvino_cache_capacity, openvino_threads

    weights_dir = weights_dir_for(models)
    print(
        f"\n# segweb runtime benchmark — {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"openvino {ov.get_version().split('-')[0]}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{openvino_threads()} OpenVINO threads, kernel cache {openvino_cache_capacity()}\n"
    )
    print(
        "| model | photo | forward torch s | forward OpenVINO s | forward speedup | "
        "e2e torch s | e2e OpenVINO s | e2e speedup | same detections (FP32) | "
        "forward INT8 s | forward INT8 speedup | e2e INT8 s | e2e INT8 speedup | "
        "INT8: torch's instances found, extra | seed-style e2e s \\| OpenVINO's speedup |\n"
        + "|---" * 16
        + "|"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            bench_photos(name, weights_dir, args.repeat, Path(folder))
    if args.skip_memory:
        return
    print(
        f"\nFresh process per row: load, then {args.sizes} photos of distinct sizes "
        "(0.1-12 MP), predict + overlay.\n\n"
        "| model | runtime | load s | RSS after load MB | RSS at end MB | peak RSS MB | "
        "s per photo |\n|---|---|---|---|---|---|---|"
    )
    for name in models:
        runs = [("torch", {}), ("openvino", {})]
        if name in INT8_MODELS:
            runs.append(("openvino", {"SEGWEB_PRECISION": "int8"}))
        for runtime, env in runs:
            r = memory(name, weights_dir, runtime, args.sizes, **env)
            label = runtime + (" INT8" if env else "")
            print(
                f"| {name} | {label} | {r['load_s']:.1f} | {r['rss_after_load_mb']:.0f} | "
                f"{r['rss_end_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['seconds_per_photo']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
