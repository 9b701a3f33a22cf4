"""What a model family module provides: the contract between the registry, the export and a
family (``maskrcnn.py``, ``yolo.py``).

A family says how to load its weights into a torch model, how to turn its network into an
OpenVINO model (and what its runtime needs besides the graph), how to run that model, and what
it feeds the network (to calibrate INT8). Everything else (which models exist: ``catalog``; the
per-process cache: ``registry``; converting, checking and installing exports: ``export``) is
shared. A family module imports neither the registry nor the export.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from .base import Segmenter
    from .catalog import ModelSpec
    from .openvino_runtime import Manifest
    from .ov import ov


class Family(abc.ABC):
    """One family of models; each family module has one instance, ``FAMILY``."""

    #: Score thresholds an export is checked at against torch: a permissive one and the default.
    verify_thresholds: tuple[float, ...] = (0.3, 0.5)

    @abc.abstractmethod
    def load_torch(self, spec: ModelSpec, source: Path, device: str) -> Segmenter:
        """The model from its weights file, run by torch on ``device``.

        Raises:
            ModelUnavailableError: the file or a package is missing.
            WeightsError: the file cannot be loaded into the architecture.
        """

    @abc.abstractmethod
    def convert(self, reference: Segmenter, example: Image.Image) -> tuple[ov.Model, dict]:
        """``reference``'s network as an FP32 OpenVINO model, and the JSON-able config its
        OpenVINO runtime needs besides the graph (transform sizes, labels...)."""

    @abc.abstractmethod
    def load_openvino(self, spec: ModelSpec, source: Path, manifest: Manifest) -> Segmenter:
        """The model run by OpenVINO from an installed (or about to be installed) export.

        Raises:
            ExportUnusableError: OpenVINO cannot load the files.
        """

    @abc.abstractmethod
    def network_inputs(self, reference: Segmenter, image: Image.Image) -> Any:
        """What the exported network is fed for ``image`` (INT8 calibration data)."""

    def quantization_options(self, nncf: Any) -> dict[str, Any]:
        """Extra keyword arguments for ``nncf.quantize`` (e.g. an ignored scope)."""
        return {}
