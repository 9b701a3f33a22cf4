"""Stored masks decode back to exactly the masks the engine found (for re-drawing overlays)."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segmentation.inference import Detection
from segmentation.masks import rle_region


def random_detection(rng) -> Detection:
    width, height = (int(v) for v in rng.integers(1, 60, 2))
    w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return Detection.from_region(
        label="dog",
        score=0.5,
        box=(x0, y0, x0 + w, y0 + h),
        mask=rng.random((h, w)) < rng.random(),
        origin=(x0, y0),
        image_size=(width, height),
    )


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
def test_rle_decodes_to_the_engines_mask_as_pycocotools_does():
    rng = np.random.default_rng(7)
    for _ in range(100):
        det = random_detection(rng)
        rle = det.rle()
        mask, (x0, y0) = rle_region(rle)
        full = np.zeros(det.full_mask().shape, dtype=bool)
        full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        assert np.array_equal(full, det.full_mask())
        reference = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(full, reference.astype(bool))


def test_the_decoded_region_is_only_as_large_as_the_mask():
    mask = np.zeros((40, 30), dtype=bool)
    mask[5:9, 10:12] = True
    det = Detection.from_region(
        label="cup", score=0.9, box=(0, 0, 30, 40), mask=mask, origin=(0, 0), image_size=(30, 40)
    )
    region, origin = rle_region(det.rle())
    assert origin == (10, 5)
    assert region.shape == (4, 2) and region.all()


def test_a_run_past_the_image_is_refused():
    with pytest.raises(ValueError, match="past the end"):
        rle_region({"size": [2, 2], "counts": "05"})
