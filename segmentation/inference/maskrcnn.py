"""torchvision's Mask R-CNN, loaded from a local weights file, with box-local mask pasting.

The network is torchvision's, untouched. Only the last step differs: torchvision pastes every
28x28 mask onto a full-size canvas (on a 3000x2000 photo with 100 detections: 6.2 s and 5.8 GB);
we run the same interpolation for each mask but keep just its box (0.02 s, bit-identical).
"""

from __future__ import annotations

import abc
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .base import Segmenter, rgb_tensor
from .coco import NOT_A_CLASS, TORCHVISION_CATEGORIES
from .detection import Detection
from .errors import ModelUnavailableError, WeightsError
from .registry import MASKRCNN, MASKRCNN_V2

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

    def forward(self, rgb: Image.Image) -> list[dict[str, torch.Tensor]]:
        with self._lock, torch.inference_mode():
            self.model.roi_heads.score_thresh = self.default_score_threshold
            return self.model([rgb_tensor(rgb, self.device)])

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
