"""Command line: segment photos without the web app.

python -m segmentation.inference photo.jpg other.png --json --overlay-dir out/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import MODEL_NAMES, InferenceError, load_image, load_segmenter
from .overlay import render_overlay


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segmentation.inference",
        description="COCO instance segmentation of photos (labels, scores, boxes, masks).",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument(
        "--model", default="auto", help=f"auto (default) or one of: {', '.join(MODEL_NAMES)}"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="minimum score, 0..1 (default 0.5)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: best)")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line per image (COCO RLE masks)"
    )
    parser.add_argument(
        "--overlay-dir", type=Path, default=None, help="also write IMAGE-overlay.png files here"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        return _fail(f"--threshold must be between 0 and 1, not {args.threshold}")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        return _fail(f"no such file: {', '.join(missing)}")
    try:
        segmenter = load_segmenter(args.model, device=args.device)
    except InferenceError as exc:
        return _fail(str(exc))
    if args.overlay_dir is not None:
        args.overlay_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
        except InferenceError as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        started = time.perf_counter()
        detections = segmenter.predict(image, score_threshold=args.threshold)
        elapsed = time.perf_counter() - started
        if args.overlay_dir is not None:
            render_overlay(image, detections).save(args.overlay_dir / f"{path.stem}-overlay.png")
        if args.json:
            print(json.dumps(_as_json(path, image.size, segmenter.name, detections)), flush=True)
        else:
            _print_table(path, image.size, segmenter.name, detections, elapsed)
    return 1 if failures else 0


def _as_json(path: Path, size: tuple[int, int], model: str, detections: list) -> dict:
    width, height = size
    return {
        "image": str(path),
        "width": width,
        "height": height,
        "model": model,
        "detections": [
            {
                "label": d.label,
                "score": round(d.score, 4),
                "box": [round(v, 2) for v in d.box],
                "segmentation": d.rle(),
            }
            for d in detections
        ],
    }


def _print_table(path: Path, size: tuple[int, int], model: str, detections: list, elapsed: float):
    width, height = size
    print(f"{path}  {width}x{height}  {model}  {len(detections)} instance(s)  {elapsed:.2f} s")
    if detections:
        print(f"  {'label':<16}{'score':>7}  {'box (x1, y1, x2, y2)':<28}{'area':>10}")
    for d in detections:
        box = ", ".join(f"{v:.0f}" for v in d.box)
        print(f"  {d.label:<16}{d.score:>7.3f}  {box:<28}{d.area:>10}")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
