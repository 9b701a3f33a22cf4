"""Compact masks and their COCO RLE encoding."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from segmentation.inference import Detection


def detection(mask, origin=(0, 0), size=None):
    h, w = mask.shape
    size = size or (origin[0] + w, origin[1] + h)
    return Detection.from_region(
        label="cat", score=0.9, box=(0, 0, 1, 1), mask=mask, origin=origin, image_size=size
    )


def test_rle_is_byte_identical_to_pycocotools_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(1, 20, size=2))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(0, width - x0 + 1)), int(rng.integers(0, height - y0 + 1))
        mask = rng.random((h, w)) < rng.random()
        det = detection(mask, (x0, y0), (width, height))
        expected = mask_utils.encode(np.asfortranarray(det.full_mask().astype(np.uint8)))
        assert det.rle() == {"size": [height, width], "counts": expected["counts"].decode()}


def test_rle_decodes_back_to_the_mask():
    mask = np.zeros((30, 50), dtype=bool)
    mask[5:25, 10:40] = True
    det = detection(mask, origin=(100, 7), size=(300, 200))
    rle = det.rle()
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), det.full_mask())
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == det.area


def test_full_mask_places_the_region_at_its_origin():
    mask = np.ones((2, 3), dtype=bool)
    full = detection(mask, origin=(4, 1), size=(10, 5)).full_mask()
    assert full.shape == (5, 10)
    assert full.sum() == 6 and full[1:3, 4:7].all()


def test_region_outside_the_image_is_rejected():
    with pytest.raises(ValueError, match="exceeds image"):
        detection(np.ones((4, 4), dtype=bool), origin=(8, 0), size=(10, 10))


def test_detections_are_immutable():
    det = detection(np.ones((2, 2), dtype=bool))
    with pytest.raises(AttributeError):
        det.score = 1.0
    with pytest.raises(ValueError, match="read-only"):
        det.mask[0, 0] = False
