"""Which runtime runs a model: eager torch, or OpenVINO on the CPU, and at which precision.
Settings only.

``$SEGWEB_RUNTIME`` picks the runtime: ``auto`` (default), ``torch`` or ``openvino``. ``auto``
means OpenVINO on a CPU when the ``openvino`` package is installed, torch otherwise (a CUDA GPU
keeps torch). Either way the answers are the same: OpenVINO only runs what ``python -m
segmentation.inference.export`` converted and checked against torch, and a model without such an
export (or with a stale one) runs on torch, with a log line saying why; a worker builds the
missing export itself in the background (``$SEGWEB_AUTO_EXPORT``).

``$SEGWEB_PRECISION`` is ``fp32`` (default: torch's answers) or ``int8`` (OpenVINO only: faster,
slightly different answers; see docs/benchmarks.md).

Nothing here imports torch or openvino: the web process may read these settings.
"""

from __future__ import annotations

import importlib.util
import os

from .catalog import FP32, PRECISIONS
from .errors import ModelUnavailableError

AUTO = "auto"
TORCH = "torch"
OPENVINO = "openvino"

#: Values ``$SEGWEB_RUNTIME`` (and ``load_segmenter(runtime=...)``) accept.
RUNTIMES: tuple[str, ...] = (AUTO, TORCH, OPENVINO)


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime``, else ``$SEGWEB_RUNTIME``, else ``auto``; checked to be one of ``RUNTIMES``."""
    value = (runtime or os.environ.get("SEGWEB_RUNTIME") or AUTO).strip().lower()
    if value not in RUNTIMES:
        raise ModelUnavailableError(
            f"Unknown runtime {value!r} (SEGWEB_RUNTIME); choose one of: {', '.join(RUNTIMES)}."
        )
    return value


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (found without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def choose_runtime(requested: str, device: str) -> str:
    """The runtime to try for a model on ``device`` (``torch`` or ``openvino``).

    Raises:
        ModelUnavailableError: ``openvino`` asked for explicitly on a GPU, or not installed.
    """
    on_cpu = device == "cpu"
    if requested == TORCH:
        return TORCH
    if requested == AUTO:
        return OPENVINO if on_cpu and openvino_installed() else TORCH
    if not on_cpu:
        raise ModelUnavailableError(
            f"SEGWEB_RUNTIME=openvino runs models on the CPU, but the device is {device}: "
            "set SEGWEB_DEVICE=cpu as well, or SEGWEB_RUNTIME=auto to use the GPU with torch."
        )
    if not openvino_installed():
        raise ModelUnavailableError(
            "SEGWEB_RUNTIME=openvino, but the openvino package is not installed "
            "(see requirements.txt)."
        )
    return OPENVINO


def requested_precision(precision: str | None = None) -> str:
    """``precision``, else ``$SEGWEB_PRECISION``, else ``fp32``; checked to be a known one."""
    value = (precision or os.environ.get("SEGWEB_PRECISION") or FP32).strip().lower()
    if value not in PRECISIONS:
        raise ModelUnavailableError(
            f"Unknown precision {value!r} (SEGWEB_PRECISION); choose one of: "
            f"{', '.join(PRECISIONS)}."
        )
    return value


def auto_export_enabled() -> bool:
    """``$SEGWEB_AUTO_EXPORT`` (default on): whether a worker builds a missing export itself."""
    value = os.environ.get("SEGWEB_AUTO_EXPORT", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def openvino_threads() -> int:
    """``$SEGWEB_OPENVINO_THREADS``, else one per CPU this process may use.

    A prefork Celery worker of several processes sets it to cores / processes, as
    ``SEGWEB_TORCH_THREADS`` (segweb/celery.py).
    """
    wanted = os.environ.get("SEGWEB_OPENVINO_THREADS")
    return max(1, int(wanted) if wanted else len(os.sched_getaffinity(0)))


def openvino_pinning() -> bool:
    """``$SEGWEB_OPENVINO_PINNING`` (``1``/``true`` to pin threads to cores); off by default.

    Pinning is OpenVINO's own default, and it is wrong for segweb: each worker process pins its
    threads to the same first cores, so two workers measured 1.88x slower than unpinned ones.
    Only a machine with a single worker process may gain from it.
    """
    return os.environ.get("SEGWEB_OPENVINO_PINNING", "").strip().lower() in ("1", "true", "yes")


#: Default bound of OpenVINO's per-shape kernel cache (see ``openvino_cache_capacity``).
DEFAULT_OPENVINO_CACHE = 50


def openvino_cache_capacity() -> int:
    """``$SEGWEB_OPENVINO_CACHE``: how many compiled kernel shapes OpenVINO keeps per model.

    OpenVINO compiles kernels for each input shape it meets and keeps them (5000 entries by
    default): a worker that sees many photo sizes grows for ever. A small cache bounds memory;
    a shape met again after eviction is recompiled (milliseconds).
    """
    wanted = os.environ.get("SEGWEB_OPENVINO_CACHE")
    return max(0, int(wanted)) if wanted else DEFAULT_OPENVINO_CACHE
