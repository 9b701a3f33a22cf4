"""segweb's segmentation engine: photo in, COCO instances and an overlay picture out.

Plain Python + torch; it never imports Django. Importing this package does not import torch
either (the web process lists models and validates uploads with it): ``load_segmenter`` does.

    from segmentation.inference import load_image, load_segmenter, render_overlay

    segmenter = load_segmenter()              # "auto": Mask R-CNN if its weights exist, else YOLOv7
    image = load_image("photo.jpg")           # EXIF-upright RGB, size and format checked
    detections = segmenter.predict(image, score_threshold=0.5)
    render_overlay(image, detections).save("overlay.png")
"""

from .coco import COCO_LABELS
from .detection import Detection
from .errors import (
    ImageShapeError,
    ImageTooLargeError,
    InferenceError,
    InvalidImageError,
    ModelUnavailableError,
    WeightsError,
)
from .image import DEFAULT_MAX_PIXELS, ImageInfo, inspect_image, load_image
from .registry import (
    AUTO,
    MODEL_NAMES,
    ModelInfo,
    default_weights_dir,
    list_models,
    load_segmenter,
    resolve_model_name,
)

__all__ = [
    "AUTO",
    "COCO_LABELS",
    "DEFAULT_MAX_PIXELS",
    "MODEL_NAMES",
    "Detection",
    "ImageInfo",
    "ImageShapeError",
    "ImageTooLargeError",
    "InferenceError",
    "InvalidImageError",
    "ModelInfo",
    "ModelUnavailableError",
    "WeightsError",
    "default_weights_dir",
    "inspect_image",
    "list_models",
    "load_image",
    "load_segmenter",
    "render_overlay",
    "resolve_model_name",
]


def __getattr__(name: str):
    if name == "render_overlay":
        from .overlay import render_overlay

        return render_overlay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
