"""The table of model families, which models can run here, and the per-process model cache.

Nothing here imports torch at module level: the web process lists models (to offer them in the
upload form) without paying for torch; only ``load_segmenter`` brings it in. Which models exist
is ``catalog``'s table; each row names its family module (``maskrcnn``, ``yolo``), imported here
only when a model of that family is loaded.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import background
from .catalog import (
    AUTO,
    AUTO_ORDER,
    FP32,
    INT8,
    MASKRCNN,
    MASKRCNN_V2,
    MODEL_NAMES,
    WEIGHTS_FILES,
    YOLOV7,
    ModelSpec,
    default_weights_dir,
    manifest_path,
    model_spec,
    source_weights,
    unavailable_reason,
    uses_weights_dir,
)
from .errors import InferenceError, ModelUnavailableError
from .runtime import (
    OPENVINO,
    auto_export_enabled,
    choose_runtime,
    requested_precision,
    requested_runtime,
)

if TYPE_CHECKING:
    from .base import Segmenter
    from .family import Family

__all__ = [  # the model names and files are the catalog's, named here too for callers' ease
    "AUTO",
    "MASKRCNN",
    "MASKRCNN_V2",
    "MODEL_NAMES",
    "WEIGHTS_FILES",
    "YOLOV7",
    "ModelInfo",
    "build_torch",
    "clear_cache",
    "default_weights_dir",
    "family",
    "list_models",
    "load_segmenter",
    "model_info",
    "resolve_model_name",
]

logger = logging.getLogger("segmentation.inference")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model segweb knows, and whether it can run on this machine."""

    name: str
    description: str
    usable: bool
    reason: str | None  # why it is not usable, for people
    weights: Path | None


def family(name: str) -> Family:
    """The family that builds model ``name`` (its module is imported now: torch with it)."""
    module = importlib.import_module(f"{__package__}.{model_spec(name).family}")
    return module.FAMILY


def model_info(name: str, *, weights_dir: Path | None = None) -> ModelInfo:
    """Describe one model; raises ``ModelUnavailableError`` for a name segweb does not know."""
    spec = model_spec(name)
    wdir = weights_dir or default_weights_dir()
    reason = unavailable_reason(spec, wdir)
    return ModelInfo(name, spec.description, reason is None, reason, source_weights(spec, wdir))


def list_models(*, weights_dir: Path | None = None) -> list[ModelInfo]:
    """Every known model with whether it is usable here, and why not."""
    return [model_info(name, weights_dir=weights_dir) for name in MODEL_NAMES]


def resolve_model_name(name: str | None = None, *, weights_dir: Path | None = None) -> str:
    """Turn ``None``/``"auto"`` into a concrete usable model; check an explicit name is usable.

    ``auto`` prefers Mask R-CNN (segweb's original model) when its weights are present, else
    YOLOv7-seg, which needs no download.
    """
    if name in (None, "", AUTO):
        for candidate in AUTO_ORDER:
            if model_info(candidate, weights_dir=weights_dir).usable:
                return candidate
        reasons = "; ".join(f"{i.name}: {i.reason}" for i in list_models(weights_dir=weights_dir))
        raise ModelUnavailableError(f"No model can run on this machine ({reasons}).")
    info = model_info(name, weights_dir=weights_dir)
    if not info.usable:
        raise ModelUnavailableError(f"Model {name} cannot run here: {info.reason}.")
    return name


def build_torch(name: str, *, weights_dir: Path, device: str = "cpu") -> Segmenter:
    """A new torch segmenter for ``name`` (not cached: the export's reference)."""
    spec = model_spec(name)
    return family(name).load_torch(spec, source_weights(spec, weights_dir), device)


@dataclass
class _Entry:
    segmenter: Segmenter
    #: The export precision wanted but not running (None: what runs is what was asked for).
    missing: str | None
    #: The wanted export's manifest as it was when the entry was made: when it changes, the
    #: next ``load_segmenter`` tries the export again (made meanwhile, by anyone).
    manifest_stamp: tuple[int, int, int] | None


_cache: dict[tuple, _Entry] = {}
_cache_lock = threading.Lock()


def load_segmenter(
    name: str | None = None,
    *,
    device: str | None = None,
    weights_dir: Path | None = None,
    runtime: str | None = None,
    precision: str | None = None,
    build_export: bool = False,
) -> Segmenter:
    """Load a model once per process and return it (thread-safe; later calls are a dict lookup
    and a ``stat``).

    Args:
        name: a name from ``MODEL_NAMES``, or ``None``/``"auto"``.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default ``$SEGWEB_DEVICE``, else CUDA when
            available, else CPU.
        weights_dir: where the torchvision weights files and the exports are (default
            ``default_weights_dir()``).
        runtime: ``"auto"``, ``"torch"`` or ``"openvino"``; default ``$SEGWEB_RUNTIME``, else
            ``auto`` (OpenVINO on a CPU when the model has a current export). A model whose
            export is missing or stale runs with torch, and a warning says why; the returned
            segmenter's ``runtime`` and ``precision`` tell what runs.
        precision: ``"fp32"`` or ``"int8"`` (OpenVINO only; torch runs FP32); default
            ``$SEGWEB_PRECISION``, else ``fp32``. Without an INT8 export, the FP32 one runs.
        build_export: when the export wanted is missing or stale, build it in the background
            (a worker: lowest priority, one at a time per weights directory; see
            ``background``). As soon as it is installed, by this process or any other, the next
            call returns the model on OpenVINO.

    Raises:
        ModelUnavailableError: unknown name, runtime or precision, weights/package missing, or
            ``openvino`` asked for on a GPU.
        WeightsError: a weights file that cannot be loaded into the architecture.
    """
    from .base import resolve_device  # torch is imported here, not before

    resolved = resolve_model_name(name, weights_dir=weights_dir)
    spec = model_spec(resolved)
    dev = resolve_device(device)
    chosen = choose_runtime(requested_runtime(runtime), dev)
    wanted = requested_precision(precision) if chosen == OPENVINO else FP32
    wdir = weights_dir or default_weights_dir()
    uses_wdir = uses_weights_dir(spec) or chosen == OPENVINO
    key = (resolved, dev, wdir.resolve() if uses_wdir else None, chosen, wanted)
    entry = _cache.get(key)
    if entry is None or _export_changed(entry, resolved, wdir):
        with _cache_lock:  # one load at a time: two threads must not both build a 170 MB model
            entry = _cache.get(key)
            if entry is None or _export_changed(entry, resolved, wdir):
                entry = _load(spec, dev, wdir, chosen, wanted, previous=entry)
                _cache[key] = entry
    if build_export and entry.missing is not None:
        background.request_export(resolved, wdir, entry.missing)
    return entry.segmenter


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _export_changed(entry: _Entry, name: str, weights_dir: Path) -> bool:
    if entry.missing is None:
        return False
    return _stamp(manifest_path(name, weights_dir, entry.missing)) != entry.manifest_stamp


def _load(
    spec: ModelSpec,
    device: str,
    weights_dir: Path,
    chosen: str,
    wanted: str,
    previous: _Entry | None,
) -> _Entry:
    if chosen != OPENVINO:
        return _Entry(_build(spec.name, device, weights_dir), None, None)
    stamp = _stamp(manifest_path(spec.name, weights_dir, wanted))
    reasons = []
    command = f"python -m segmentation.inference.export --model {spec.name}" + (
        f" --precision {wanted}" if wanted != FP32 else ""
    )
    for precision in (wanted, FP32) if wanted == INT8 else (wanted,):
        segmenter = _build_openvino(spec, weights_dir, precision, reasons)
        if segmenter is not None:
            if precision != wanted:
                logger.warning(
                    "%s runs the FP32 OpenVINO export, not INT8: %s. To build it: %s",
                    spec.name, "; ".join(reasons), command,
                )  # fmt: skip
            return _Entry(segmenter, None if precision == wanted else wanted, stamp)
    if previous is not None and previous.segmenter.runtime == OPENVINO:
        return _Entry(previous.segmenter, wanted, stamp)  # the FP32 export it ran stays
    logger.warning(
        "%s runs with torch, not OpenVINO: %s. To build the export: %s (make export)%s",
        spec.name,
        "; ".join(reasons),
        command,
        "; workers build it in the background" if auto_export_enabled() else "",
    )
    torch_model = previous.segmenter if previous is not None else None
    return _Entry(torch_model or _build(spec.name, device, weights_dir), wanted, stamp)


def _build(name: str, device: str, weights_dir: Path) -> Segmenter:
    return build_torch(name, weights_dir=weights_dir, device=device)


def _build_openvino(
    spec: ModelSpec, weights_dir: Path, precision: str, reasons: list[str]
) -> Segmenter | None:
    """The model on OpenVINO at ``precision``, or None (the reason appended) when it has no
    export that may be used."""
    manifest = manifest_path(spec.name, weights_dir, precision)
    if not manifest.is_file():  # no need to import openvino to say so
        reasons.append(f"no {precision.upper()} OpenVINO export ({manifest} not found)")
        return None
    from .openvino_runtime import ExportUnusableError, current_manifest

    try:
        installed = current_manifest(spec, weights_dir, precision)
        return family(spec.name).load_openvino(spec, source_weights(spec, weights_dir), installed)
    except ExportUnusableError as exc:
        reasons.append(str(exc))
    except (InferenceError, RuntimeError, OSError) as exc:  # never a failed job: torch runs it
        logger.exception("%s: the OpenVINO export cannot be used", spec.name)
        reasons.append(f"the OpenVINO export cannot be used ({exc})")
    return None


def clear_cache() -> None:
    """Forget loaded models (tests; a worker reloading weights)."""
    with _cache_lock:
        _cache.clear()
