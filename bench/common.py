"""What the benchmarks share: timing, the bare networks, and the photos they run on.

Bench-only helpers live here, not in the engine's ``Segmenter``: they reach into each runtime's
internals to time the network alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
from PIL import Image

#: Real photos the engine was never calibrated on, reachable offline: Debian's opencv-doc
#: (`apt-get install opencv-doc`), scikit-image's (test tools) and scikit-learn's (installed with
#: nncf) sample photos. Independent photos only: no crops or rescales of one another.
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
    "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg",
    "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "licenseplate_motion.jpg",
    "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png", "squirrel_cls.jpg",
    "stuff.jpg",
)  # fmt: skip


def unseen_photos() -> dict[str, Path]:
    """The real photos above that are on this machine (none of them is a shipped photo)."""
    import skimage.data
    import sklearn.datasets

    skimage_dir = Path(skimage.data.__file__).parent
    sklearn_dir = Path(sklearn.datasets.__file__).parent / "images"
    candidates = {
        **{f"opencv {name}": OPENCV_DATA / name for name in OPENCV_PHOTOS},
        "skimage motorcycle_left.png": skimage_dir / "motorcycle_left.png",
        "skimage camera.png": skimage_dir / "camera.png",
        "sklearn china.jpg": sklearn_dir / "china.jpg",
        "sklearn flower.jpg": sklearn_dir / "flower.jpg",
    }
    return {label: path for label, path in candidates.items() if path.is_file()}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def network_only(segmenter, image: Image.Image) -> object:
    """The network alone, the same work in every runtime: Mask R-CNN: transform + network at
    torchvision's 0.05 threshold, no paste; YOLOv7-seg: letterbox + network."""
    import torch

    from segmentation.inference.base import rgb_tensor
    from segmentation.inference.maskrcnn import MaskRCNNBase

    with segmenter._lock, torch.inference_mode():
        if isinstance(segmenter, MaskRCNNBase):
            images, _ = segmenter.transform([rgb_tensor(image, segmenter.device)])
            return segmenter._detect(images, segmenter.default_score_threshold)
        padded, _, _ = segmenter.letterbox(np.asarray(image))
        return segmenter._network(padded)


def bare_forward(segmenter, image: Image.Image) -> object:
    """The torch network as its authors run it: torchvision's ``model([image])`` (with its
    full-image mask paste) for Mask R-CNN; letterbox + network for YOLOv7-seg."""
    import torch

    from segmentation.inference.base import rgb_tensor
    from segmentation.inference.maskrcnn import MaskRCNNSegmenter

    if not isinstance(segmenter, MaskRCNNSegmenter):
        return network_only(segmenter, image)
    with segmenter._lock, torch.inference_mode():
        segmenter.model.roi_heads.score_thresh = segmenter.default_score_threshold
        return segmenter.model([rgb_tensor(image, segmenter.device)])
