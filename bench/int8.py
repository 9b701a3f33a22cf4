"""INT8 against FP32 on real photos the engine never saw: how many instances it keeps, how many
it adds, and how fast it is against torch.

    python bench/int8.py                      # YOLOv7-seg; exports FP32 and INT8 first if needed
    python bench/int8.py --repeat 3 --threshold 0.5

The photos (``bench.common.unseen_photos``): 22 from Debian's opencv-doc (`apt-get install
opencv-doc`), 2 from scikit-image and 2 from scikit-learn, none of them a shipped photo (the
INT8 export is calibrated on those). For each photo, torch, OpenVINO FP32 and OpenVINO INT8 run
``predict`` in turn, ``--repeat`` rounds after a warm-up (medians; speed-ups are medians of
per-round ratios). An FP32 instance (score >= threshold) is reproduced when INT8 reports one of
the same label with box IoU >= 0.9 and mask IoU >= 0.85 (``agreement.Reproduction``); "extra"
are INT8 instances matching none.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import timed, unseen_photos

YOLOV7 = "yolov7_seg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    import torch

    from segmentation.inference import load_image, load_segmenter
    from segmentation.inference.agreement import Agreement, Reproduction, compare_detections
    from segmentation.inference.catalog import default_weights_dir
    from segmentation.inference.export import export_model

    weights = default_weights_dir()
    for precision in ("fp32", "int8"):
        export_model(YOLOV7, weights_dir=weights, precision=precision, echo=print)
    runtimes = {
        "torch": load_segmenter(YOLOV7, device="cpu", runtime="torch"),
        "fp32": load_segmenter(YOLOV7, device="cpu", runtime="openvino", precision="fp32"),
        "int8": load_segmenter(YOLOV7, device="cpu", runtime="openvino", precision="int8"),
    }
    assert runtimes["int8"].precision == "int8" and runtimes["fp32"].runtime == "openvino"
    photos = unseen_photos()
    print(
        f"# INT8 against FP32, YOLOv7-seg — {time.strftime('%Y-%m-%d')}, torch "
        f"{torch.__version__}, {len(os.sched_getaffinity(0))} CPUs, load "
        f"{os.getloadavg()[0]:.1f}, {len(photos)} photos, threshold {args.threshold}\n"
    )
    print(
        "| photo | size | FP32 instances | reproduced by INT8 | extra in INT8 | torch s | "
        "FP32 s | INT8 s | INT8 speed-up vs torch | FP32 = torch |\n" + "|---" * 10 + "|"
    )
    total = Reproduction()
    fp32_same = Agreement()
    speedups, fp32_speedups = [], []
    for label, path in photos.items():
        image = load_image(path)
        for segmenter in runtimes.values():  # warm-up: OpenVINO compiles for the new shape
            segmenter.predict(image, score_threshold=args.threshold)
        times = {key: [] for key in runtimes}
        answers = {}
        for _ in range(args.repeat):
            for key, segmenter in runtimes.items():
                seconds, answers[key] = timed(
                    segmenter.predict, image, score_threshold=args.threshold
                )
                times[key].append(seconds)
        photo = Reproduction()
        missed = photo.add(answers["fp32"], answers["int8"])
        total.reference += photo.reference
        total.reproduced += photo.reproduced
        total.extra += photo.extra
        same = not compare_detections(
            answers["torch"], answers["fp32"], threshold=args.threshold, agreement=fp32_same
        )
        ratio = statistics.median(t / q for t, q in zip(times["torch"], times["int8"], strict=True))
        fp32_ratio = statistics.median(
            t / f for t, f in zip(times["torch"], times["fp32"], strict=True)
        )
        speedups.append(ratio)
        fp32_speedups.append(fp32_ratio)
        print(
            f"| {label} | {image.width}x{image.height} | {photo.reference} | {photo.reproduced} | "
            f"{photo.extra} | {statistics.median(times['torch']):.2f} | "
            f"{statistics.median(times['fp32']):.2f} | {statistics.median(times['int8']):.2f} | "
            f"{ratio:.2f}x | {'yes' if same else 'NO'} |",
            flush=True,
        )
        for problem in missed:
            print(f"|   {problem} | | | | | | | | | |")
    print(
        f"\n**{len(photos)} photos: INT8 reproduces {total.reproduced} of FP32's "
        f"{total.reference} instances ({total.share:.1%}) and adds {total.extra}; predict "
        f"{statistics.median(speedups):.2f}x torch's speed (median over photos; OpenVINO FP32: "
        f"{statistics.median(fp32_speedups):.2f}x), load {os.getloadavg()[0]:.1f}.**"
    )


if __name__ == "__main__":
    main()
