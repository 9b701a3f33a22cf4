"""What each change to YOLOv7-seg's OpenVINO path gives, measured interleaved in one process.

    python bench/yolo_openvino.py [--repeat 5]

Variants of the FP32 network, all on the same photos, each timed as ``predict`` (letterbox,
network, NMS, masks), in turn with torch's own:

- ``issue 6``: the export as it was (float NCHW input made by torch, dynamic shape);
- ``u8 input``: the conversion to float, the division by 255 and the layout in the graph
  (OpenVINO's pre-processing), fed the letterboxed 8-bit photo: what segweb ships;
- ``u8 input, static shape``: the same compiled for the photo's one letterboxed shape (what a
  per-shape cache of compiled models would give);
- ``INT8``: the shipped INT8 export (for scale).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import timed, unseen_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from segmentation.inference import load_image, load_segmenter
    from segmentation.inference.catalog import YOLOV7, default_weights_dir
    from segmentation.inference.export import export_model
    from segmentation.inference.openvino_runtime import Manifest, compile_config, core
    from segmentation.inference.ov import ov
    from segmentation.inference.photos import shipped_photos
    from segmentation.inference.tracing import trace_to_openvino
    from segmentation.inference.yolo import FAMILY, OpenVINOYoloSegmenter, _ExportedNetwork

    weights = default_weights_dir()
    export_model(YOLOV7, weights_dir=weights, precision="int8", echo=print)
    reference = load_segmenter(YOLOV7, device="cpu", runtime="torch")
    example = next(iter(shipped_photos().values()))
    shipped, _ = FAMILY.convert(reference, example)

    # The issue-6 export: float input made by torch.
    model = copy.deepcopy(reference.model)
    model.model[-1].dynamic = True
    x = reference.tensor(reference.letterbox(np.asarray(example))[0])
    float_graph = trace_to_openvino(
        _ExportedNetwork(model), (x,), [ov.PartialShape([1, 3, -1, -1])]
    )

    class FloatInput(OpenVINOYoloSegmenter):
        def _network(self, padded):
            tensor = torch.from_numpy(padded).permute(2, 0, 1).to(torch.float32).div_(255)[None]
            result = self._request.infer({0: tensor.numpy()}, share_inputs=True)
            return torch.from_numpy(result[0]), torch.from_numpy(result[1])

    class StaticShape(OpenVINOYoloSegmenter):
        """Compiles the graph for each letterboxed shape it meets."""

        def __init__(self, *a, graph, **k):
            super().__init__(*a, **k)
            self._graph, self._by_shape = graph, {}

        def _network(self, padded):
            shape = padded.shape[:2]
            if shape not in self._by_shape:
                graph = self._graph.clone()
                graph.reshape([1, *shape, 3])
                compiled = core().compile_model(graph, "CPU", compile_config())
                self._by_shape[shape] = compiled.create_infer_request()
            result = self._by_shape[shape].infer({0: padded[None]}, share_inputs=True)
            return torch.from_numpy(result[0]), torch.from_numpy(result[1])

    config = {"stride": reference.stride, "labels": list(reference.labels)}
    manifest = Manifest(Path("x"), Path("x"), Path("x"), {}, config, {})
    source = reference.checkpoint
    variants = {
        "torch": reference,
        "issue 6": FloatInput(source, core().compile_model(float_graph, "CPU", compile_config()),
                              manifest),
        "u8 input": OpenVINOYoloSegmenter(
            source, core().compile_model(shipped, "CPU", compile_config()), manifest
        ),
        "u8 input, static shape": StaticShape(
            source, core().compile_model(shipped, "CPU", compile_config()), manifest,
            graph=shipped,
        ),
        "INT8": load_segmenter(YOLOV7, device="cpu", runtime="openvino", precision="int8"),
    }  # fmt: skip
    photos = {label: load_image(path) for label, path in list(unseen_photos().items())[:6]}
    photos["coffee (shipped)"] = shipped_photos()["coffee.jpg"]
    print(
        f"# YOLOv7-seg OpenVINO variants — {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.1f}\n"
    )
    names = [v for v in variants if v != "torch"]
    print("| photo | torch s | " + " | ".join(f"{v}: s, speed-up" for v in names) + " |")
    print("|---" * (2 + len(names)) + "|")
    speedups = {v: [] for v in names}
    for label, image in photos.items():
        for segmenter in variants.values():
            segmenter.predict(image)  # warm-up (and compile, for the static one)
        times = {v: [] for v in variants}
        for _ in range(args.repeat):
            for v, segmenter in variants.items():
                times[v].append(timed(segmenter.predict, image)[0])
        cells = []
        for v in names:
            ratio = statistics.median(a / b for a, b in zip(times["torch"], times[v], strict=True))
            speedups[v].append(ratio)
            cells.append(f"{statistics.median(times[v]):.2f}, {ratio:.2f}x")
        print(f"| {label} | {statistics.median(times['torch']):.2f} | " + " | ".join(cells) + " |")
    print(
        "| **median over photos** | | "
        + " | ".join(f"**{statistics.median(speedups[v]):.2f}x**" for v in names)
        + f" |\n\nload at the end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
