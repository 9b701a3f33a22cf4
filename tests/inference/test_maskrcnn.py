"""Mask R-CNN: the engine must give exactly what torchvision gives, from a weights file."""

import numpy as np
import pytest
import torch
import torchvision

from segmentation.inference import (
    ModelUnavailableError,
    WeightsError,
    load_image,
    load_segmenter,
)
from segmentation.inference.base import rgb_tensor
from segmentation.inference.catalog import MASKRCNN, MASKRCNN_V2, WEIGHTS_FILES
from segmentation.inference.coco import NOT_A_CLASS, TORCHVISION_CATEGORIES
from tests.inference.conftest import random_maskrcnn
from tests.photos import COFFEE

THRESHOLD = 0.3


@pytest.mark.slow
def test_weights_load_through_segweb_weights_dir_and_match_torchvision_exactly(maskrcnn):
    image = load_image(COFFEE)
    reference_model = random_maskrcnn()  # same seed, built and run by torchvision directly
    with torch.inference_mode():
        reference = reference_model([rgb_tensor(image, "cpu")])[0]
    names = [TORCHVISION_CATEGORIES[i] for i in reference["labels"].tolist()]
    keep = [
        i
        for i, (name, score) in enumerate(zip(names, reference["scores"].tolist(), strict=True))
        if score >= THRESHOLD and name not in NOT_A_CLASS
    ]
    assert len(keep) >= 3, "the random model must give detections for this test to mean anything"

    detections = maskrcnn.predict(image, score_threshold=THRESHOLD)

    assert [d.label for d in detections] == [names[i] for i in keep]
    np.testing.assert_allclose(
        [d.box for d in detections], reference["boxes"][keep].numpy(), atol=1e-3
    )
    np.testing.assert_allclose(
        [d.score for d in detections], reference["scores"][keep].numpy(), atol=1e-6
    )
    for det, i in zip(detections, keep, strict=True):
        # Box-local pasting must be bit-identical to torchvision's full-image paste.
        expected = (reference["masks"][i, 0] > 0.5).numpy()
        assert np.array_equal(det.full_mask(), expected)
        assert det.area == int(expected.sum())


@pytest.mark.slow
def test_detections_below_the_threshold_are_not_reported(maskrcnn):
    image = load_image(COFFEE)
    low = maskrcnn.predict(image, score_threshold=0.25)
    high = maskrcnn.predict(image, score_threshold=0.35)
    assert all(d.score >= 0.35 for d in high)
    assert len(high) < len(low)
    assert [d.score for d in high] == [d.score for d in low if d.score >= 0.35]


@pytest.mark.slow
def test_masks_are_kept_compact(maskrcnn):
    image = load_image(COFFEE)
    for det in maskrcnn.predict(image, score_threshold=THRESHOLD):
        x0, y0, x1, y1 = det.mask_box
        assert det.mask.shape == (y1 - y0, x1 - x0)
        assert det.mask.size < image.width * image.height


def test_missing_weights_file_is_named_in_the_error(tmp_path, fresh_cache):
    with pytest.raises(ModelUnavailableError, match=WEIGHTS_FILES[MASKRCNN]):
        load_segmenter(MASKRCNN, weights_dir=tmp_path)


def test_corrupt_weights_file_is_named_in_the_error(tmp_path, fresh_cache):
    path = tmp_path / WEIGHTS_FILES[MASKRCNN]
    path.write_bytes(b"PK\x03\x04 this is not a torch file" * 100)
    with pytest.raises(WeightsError, match=str(path)):
        load_segmenter(MASKRCNN, weights_dir=tmp_path)


def test_truncated_weights_file_is_named_in_the_error(tmp_path, maskrcnn_weights_dir, fresh_cache):
    whole = (maskrcnn_weights_dir / WEIGHTS_FILES[MASKRCNN]).read_bytes()
    path = tmp_path / WEIGHTS_FILES[MASKRCNN]
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError, match=str(path)):
        load_segmenter(MASKRCNN, weights_dir=tmp_path)


def test_weights_of_another_architecture_are_refused_with_the_file_name(tmp_path, fresh_cache):
    path = tmp_path / WEIGHTS_FILES[MASKRCNN]
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=rf"{path}.*does not fit {MASKRCNN}"):
        load_segmenter(MASKRCNN, weights_dir=tmp_path)


def test_a_pickled_whole_model_is_refused_rather_than_executed(tmp_path, fresh_cache):
    path = tmp_path / WEIGHTS_FILES[MASKRCNN]
    torch.save({"model": torchvision.models.resnet18(weights=None)}, path)
    with pytest.raises(WeightsError, match=str(path)):
        load_segmenter(MASKRCNN, weights_dir=tmp_path)


@pytest.mark.slow
def test_training_checkpoints_with_a_model_key_load(tmp_path, maskrcnn_weights_dir, fresh_cache):
    state = torch.load(maskrcnn_weights_dir / WEIGHTS_FILES[MASKRCNN], weights_only=True)
    torch.save({"model": state, "epoch": 25}, tmp_path / WEIGHTS_FILES[MASKRCNN])
    segmenter = load_segmenter(MASKRCNN, weights_dir=tmp_path)
    assert segmenter.name == MASKRCNN


@pytest.mark.slow
def test_the_v2_architecture_also_matches_torchvision(tmp_path, fresh_cache):
    torch.save(
        random_maskrcnn(name=MASKRCNN_V2).state_dict(), tmp_path / WEIGHTS_FILES[MASKRCNN_V2]
    )
    segmenter = load_segmenter(MASKRCNN_V2, weights_dir=tmp_path, device="cpu")
    image = load_image(COFFEE).resize((300, 200))
    with torch.inference_mode():
        reference = random_maskrcnn(name=MASKRCNN_V2)([rgb_tensor(image, "cpu")])[0]
    threshold = float(reference["scores"][min(5, len(reference["scores"]) - 1)])
    names = [TORCHVISION_CATEGORIES[i] for i in reference["labels"].tolist()]
    keep = [
        i
        for i, (name, score) in enumerate(zip(names, reference["scores"].tolist(), strict=True))
        if score >= threshold and name not in NOT_A_CLASS
    ]
    detections = segmenter.predict(image, score_threshold=threshold)
    assert [d.label for d in detections] == [names[i] for i in keep]
    for det, i in zip(detections, keep, strict=True):
        assert np.array_equal(det.full_mask(), (reference["masks"][i, 0] > 0.5).numpy())
