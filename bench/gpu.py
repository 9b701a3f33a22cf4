"""GPU against CPU: ``predict`` time per photo on each device, torch runtime.

    python bench/gpu.py            # on a machine with a CUDA GPU; figures in docs/benchmarks.md

YOLOv7-seg on its real weights (threshold 0.5) and Mask R-CNN on the tests' seeded random weights
(threshold 0.3, where they score). Median of 5 after a warm-up; CUDA timings synchronise first.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.engine import random_weights_dir
from segmentation.inference import load_image, load_segmenter
from segmentation.inference.catalog import MASKRCNN, YOLOV7
from tests.photos import ASTRONAUT, MOTORCYCLE


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here")
    weights = random_weights_dir()
    photos = {
        "astronaut 512x512": load_image(ASTRONAUT),
        "motorcycle 741x500": load_image(MOTORCYCLE),
    }
    photos["motorcycle 12 MP"] = photos["motorcycle 741x500"].resize((4000, 3000))
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads\n")  # fmt: skip
    print("| model | device | photo | predict ms | detections |\n|---|---|---|---|---|")
    for name, threshold in ((YOLOV7, 0.5), (MASKRCNN, 0.3)):
        for device in ("cuda", "cpu"):
            segmenter = load_segmenter(name, device=device, weights_dir=weights, runtime="torch")
            for label, image in photos.items():
                segmenter.predict(image, score_threshold=threshold)  # warm-up
                times = []
                for _ in range(5):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    detections = segmenter.predict(image, score_threshold=threshold)
                    times.append(time.perf_counter() - started)
                print(f"| {name} | {device} | {label} | {statistics.median(times) * 1000:.1f} | "
                      f"{len(detections)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
