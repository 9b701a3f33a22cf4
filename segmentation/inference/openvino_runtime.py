"""OpenVINO, shared by every family: export manifests, the process's ``Core``, compiling.

``python -m segmentation.inference.export`` (and a worker, in the background) converts each
model's network to OpenVINO IR, checks on the photos segweb ships that it gives the torch
runtime's detections, and only then installs it in the weights directory, next to a manifest::

    weights/yolov7_seg.openvino.json              which files, and the fingerprint below
    weights/yolov7_seg.openvino.<token>.xml       the graph
    weights/yolov7_seg.openvino.<token>.bin       its weights (FP32)
    weights/yolov7_seg.openvino-int8.json         the same for the INT8 export, if made

The fingerprint (``catalog.fingerprint``) is the SHA-256 of the source weights, the versions of
the packages the export depends on, the precision and ``EXPORT_FORMAT``. A worker loads an export
only if its fingerprint is today's: anything else (no export, weights replaced, packages
upgraded, files damaged) raises ``ExportUnusableError``, and the registry runs the model with
torch instead.

No torch here: the OpenVINO runtimes of the families keep torch out of what they can.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from .catalog import FP32, ModelSpec, fingerprint, manifest_path, source_weights
from .errors import InferenceError
from .ov import ov
from .runtime import openvino_cache_capacity, openvino_pinning, openvino_threads


class ExportUnusableError(InferenceError):
    """No export, or one that must not be used (stale, damaged); the message says which."""


@dataclass(frozen=True)
class Manifest:
    """A model's installed export, as described by its manifest file."""

    path: Path
    xml: Path
    bin: Path
    fingerprint: dict[str, str | int]
    config: dict  # what the runtime needs besides the graph (transform sizes, labels...)
    verification: dict  # what the export was checked on, for people

    @property
    def precision(self) -> str:
        return str(self.fingerprint.get("precision", FP32))

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


def current_manifest(spec: ModelSpec, weights_dir: Path, precision: str = FP32) -> Manifest:
    """The model's export if it can be used as it is; else ``ExportUnusableError`` says why."""
    manifest = Manifest.read(manifest_path(spec.name, weights_dir, precision))
    source = source_weights(spec, weights_dir)
    if source is None or not source.is_file():
        raise ExportUnusableError(f"its source weights {source} are missing")
    today = fingerprint(spec, source, precision)
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


def compile_config(precision: str = FP32) -> dict[str, object]:
    """How segweb compiles every model for the CPU (see ``runtime`` for the settings)."""
    return {
        # FP32 answers must not change: never let the plugin pick bf16 (its default on CPUs with
        # AMX). An INT8 graph runs its quantized layers in int8 and the rest in f32 all the same.
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",  # one photo at a time, as fast as possible
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": openvino_threads(),
        "ENABLE_CPU_PINNING": openvino_pinning(),
        "CPU_RUNTIME_CACHE_CAPACITY": openvino_cache_capacity(),
    }


def compile_files(manifest: Manifest) -> ov.CompiledModel:
    """Read an export's IR pair and compile it for the CPU with ``compile_config()``."""
    try:
        model = core().read_model(str(manifest.xml), str(manifest.bin))
        return core().compile_model(model, "CPU", compile_config(manifest.precision))
    except RuntimeError as exc:  # what OpenVINO raises for a missing, damaged or foreign file
        raise ExportUnusableError(f"OpenVINO cannot load {manifest.xml.name}: {exc}") from exc
