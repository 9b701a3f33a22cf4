"""The Mask R-CNN family: torchvision's Mask R-CNN (v1, v2), loaded from a local weights file,
run by torch or by OpenVINO, with box-local mask pasting.

The network is torchvision's, untouched. Only the last step differs: torchvision pastes every
28x28 mask onto a full-size canvas (on a 3000x2000 photo with 100 detections: 6.2 s and 5.8 GB);
we run the same interpolation for each mask but keep just its box (0.02 s, bit-identical).

The OpenVINO export holds the network between torchvision's transform and the mask paste, with
the score threshold as an input; the transform and the paste stay the torch runtime's own code.
"""

from __future__ import annotations

import abc
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .base import Segmenter, rgb_tensor
from .catalog import MASKRCNN, MASKRCNN_V2, ModelSpec
from .coco import NOT_A_CLASS, TORCHVISION_CATEGORIES
from .detection import Detection
from .errors import ModelUnavailableError, WeightsError
from .family import Family

if TYPE_CHECKING:
    from .openvino_runtime import Manifest
    from .ov import ov

_BUILDERS = {MASKRCNN: maskrcnn_resnet50_fpn, MASKRCNN_V2: maskrcnn_resnet50_fpn_v2}
MASK_THRESHOLD = 0.5  # torchvision's documented threshold for its soft masks


def build_model(name: str) -> torch.nn.Module:
    """The bare architecture, no weights: nothing is downloaded."""
    return _BUILDERS[name](weights=None, weights_backbone=None, num_classes=91)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; ``{"model": state_dict}`` checkpoints too."""
    if not path.is_file():
        raise ModelUnavailableError(f"Weights file {path} not found.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile,
            ValueError, AttributeError, KeyError) as exc:  # fmt: skip
        raise WeightsError(f"Weights file {path} cannot be read as PyTorch weights: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint (torchvision's references save these)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"Weights file {path} does not hold a state dict of tensors.")
    return state


class InPlaceTransform(GeneralizedRCNNTransform):
    """torchvision's transform, normalising in place: the same values with a third of the memory.

    torchvision computes ``(image - mean) / std`` into two new full-size float tensors while its
    input is still alive (at 12 MP, 144 MB each). Every tensor segweb hands this transform is made
    for that one call (``rgb_tensor``), so the same subtraction and division can overwrite it:
    identical IEEE operations, identical results, and ~290 MB less at a 12 MP worker's peak.
    Only ``_predict`` uses it; ``forward`` keeps the model's own transform.
    """

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> InPlaceTransform:
        return cls(
            min_size=transform.min_size,
            max_size=transform.max_size,
            image_mean=transform.image_mean,
            image_std=transform.image_std,
            size_divisible=transform.size_divisible,
            fixed_size=transform.fixed_size,
        ).eval()

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            return super().normalize(image)  # torchvision's error
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return image.sub_(mean[:, None, None]).div_(std[:, None, None])


class MaskRCNNBase(Segmenter):
    """What every Mask R-CNN runtime shares: torchvision's transform before the network, our
    box-local paste after it. Subclasses run the network itself (``_detect``)."""

    transform: GeneralizedRCNNTransform
    #: torchvision's ``roi_heads.score_thresh``: the lowest score the network ever reports.
    default_score_threshold: float

    def _predict(self, rgb: Image.Image, score_threshold: float) -> list[Detection]:
        width, height = rgb.size
        images, _ = self.transform([rgb_tensor(rgb, self.device)])
        # Boxes scoring under the threshold can only suppress lower-scoring boxes in NMS, so
        # dropping them before NMS changes nothing above it, and spares the mask head. The
        # network keeps scores strictly above its threshold: one float32 step lower keeps
        # ">= score_threshold".
        below = float(np.nextafter(np.float32(score_threshold), np.float32(0)))
        network_threshold = max(self.default_score_threshold, below)
        boxes, labels, scores, masks = self._detect(images, network_threshold)
        boxes = resize_boxes(boxes, images.image_sizes[0], (height, width))
        keep = scores >= score_threshold
        return paste_detections(
            boxes[keep], labels[keep], scores[keep], masks[keep], (width, height)
        )

    @abc.abstractmethod
    def _detect(
        self, images: ImageList, score_threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network after the transform, for one image.

        Returns boxes (in ``images``' resized pixels), labels, scores and 28x28 mask
        probabilities, for detections scoring above ``score_threshold``, best first.
        """


class MaskRCNNSegmenter(MaskRCNNBase):
    """Mask R-CNN R50-FPN (v1 or v2) with COCO's 91 categories, run by torch."""

    def __init__(self, name: str, weights: Path, *, device: str) -> None:
        super().__init__(device=device)
        self.name = name
        self.weights = weights
        model = build_model(name)
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:3]
            raise WeightsError(
                f"Weights file {weights} does not fit {name}: " + " ".join(first)
            ) from exc
        self.model = model.eval().to(device)
        self.transform = InPlaceTransform.like(self.model.transform)
        self.default_score_threshold = self.model.roi_heads.score_thresh

    def _detect(
        self, images: ImageList, score_threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        model.roi_heads.score_thresh = score_threshold
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
        result = detections[0]
        return result["boxes"], result["labels"], result["scores"], result["masks"]


class OpenVINOMaskRCNNSegmenter(MaskRCNNBase):
    """Mask R-CNN with the network run by OpenVINO; transform and paste as the torch runtime."""

    runtime = "openvino"

    def __init__(self, name: str, weights: Path, compiled: ov.CompiledModel, manifest: Manifest):
        super().__init__(device="cpu")
        self.name = name
        self.weights = weights
        self.precision = manifest.precision
        transform = manifest.config["transform"]
        self.transform = InPlaceTransform(
            min_size=transform["min_size"],
            max_size=transform["max_size"],
            image_mean=transform["image_mean"],
            image_std=transform["image_std"],
            size_divisible=transform["size_divisible"],
            fixed_size=transform["fixed_size"],
        ).eval()
        self.default_score_threshold = float(manifest.config["score_threshold"])
        self._request = compiled.create_infer_request()

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


class _ExportedCore(torch.nn.Module):
    """What the export holds: the network between torchvision's transform and the mask paste,
    for one image, with the score threshold as an input (so that, as in the torch runtime, the
    mask head only runs on the boxes the caller will keep)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, image_size: torch.Tensor, score_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        sizes = [(image_size[0], image_size[1])]
        features = model.backbone(images)
        proposals, _ = model.rpn(ImageList(images, sizes), features)
        model.roi_heads.score_thresh = score_threshold  # traced as the input, not a constant
        detections, _ = model.roi_heads(features, proposals, sizes)
        result = detections[0]
        return result["boxes"], result["labels"], result["scores"], result["masks"]


class MaskRCNNFamily(Family):
    """torchvision's Mask R-CNN R50-FPN, v1 and v2."""

    def load_torch(self, spec: ModelSpec, source: Path, device: str) -> MaskRCNNSegmenter:
        return MaskRCNNSegmenter(spec.name, source, device=device)

    def convert(self, reference: Segmenter, example: Image.Image) -> tuple[ov.Model, dict]:
        from .ov import ov
        from .tracing import trace_to_openvino

        assert isinstance(reference, MaskRCNNSegmenter)
        model = reference.model
        # One eager run first: MultiScaleRoIAlign caches its level scales on its first call,
        # and a first call inside the tracer would record that set-up into the graph.
        reference.predict(example, score_threshold=reference.default_score_threshold)
        with torch.inference_mode():
            images, _ = reference.transform([rgb_tensor(example, "cpu")])
        inputs = (
            images.tensors.clone(),
            torch.tensor(images.image_sizes[0], dtype=torch.int64),
            torch.tensor(reference.default_score_threshold, dtype=torch.float32),
        )
        shapes = [ov.PartialShape([1, 3, -1, -1]), ov.PartialShape([2]), ov.PartialShape([])]
        try:
            graph = trace_to_openvino(_ExportedCore(model), inputs, shapes)
        finally:
            model.roi_heads.score_thresh = reference.default_score_threshold
        transform = reference.transform
        config = {
            "transform": {
                "min_size": list(transform.min_size),
                "max_size": transform.max_size,
                "image_mean": list(transform.image_mean),
                "image_std": list(transform.image_std),
                "size_divisible": transform.size_divisible,
                "fixed_size": transform.fixed_size,
            },
            "score_threshold": reference.default_score_threshold,
        }
        return graph, config

    def load_openvino(
        self, spec: ModelSpec, source: Path, manifest: Manifest
    ) -> OpenVINOMaskRCNNSegmenter:
        from .openvino_runtime import compile_files

        return OpenVINOMaskRCNNSegmenter(spec.name, source, compile_files(manifest), manifest)

    def network_inputs(self, reference: Segmenter, image: Image.Image) -> tuple:
        assert isinstance(reference, MaskRCNNBase)
        with torch.inference_mode():
            images, _ = reference.transform([rgb_tensor(image, "cpu")])
        return (
            images.tensors.numpy().copy(),
            np.asarray(images.image_sizes[0], dtype=np.int64),
            np.asarray(reference.default_score_threshold, dtype=np.float32),
        )


def paste_detections(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    masks: torch.Tensor,
    image_size: tuple[int, int],
) -> list[Detection]:
    """torchvision's ``paste_masks_in_image``, keeping each mask's own region only."""
    if len(boxes) == 0:
        return []
    width, height = image_size
    expanded, scale = expand_masks(masks, padding=1)
    int_boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    out = []
    for mask, box, fbox, label, score in zip(
        expanded, int_boxes, boxes.tolist(), labels.tolist(), scores.tolist(), strict=True
    ):
        if TORCHVISION_CATEGORIES[label] in NOT_A_CLASS:
            continue  # ids COCO left unused; only a badly trained model would predict them
        region, origin = _paste_one(mask[0], box, height, width)
        out.append(
            Detection.from_region(
                label=TORCHVISION_CATEGORIES[label],
                score=score,
                box=tuple(fbox),
                mask=(region > MASK_THRESHOLD).cpu().numpy(),
                origin=origin,
                image_size=image_size,
            )
        )
    return out


def _paste_one(
    mask: torch.Tensor, box: list[int], im_h: int, im_w: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    # Same arithmetic as torchvision.models.detection.roi_heads.paste_mask_in_image, minus the
    # full-size canvas: the interpolation is identical, so the pixels are too.
    w = max(int(box[2] - box[0] + 1), 1)
    h = max(int(box[3] - box[1] + 1), 1)
    resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)
    resized = resized[0, 0]
    x_0, x_1 = max(box[0], 0), min(box[2] + 1, im_w)
    y_0, y_1 = max(box[1], 0), min(box[3] + 1, im_h)
    x_1, y_1 = max(x_1, x_0), max(y_1, y_0)  # a box entirely outside the image pastes nothing
    region = resized[(y_0 - box[1]) : (y_1 - box[1]), (x_0 - box[0]) : (x_1 - box[0])]
    return region, (x_0, y_0)


FAMILY = MaskRCNNFamily()
