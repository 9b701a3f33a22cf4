"""On a machine with a CUDA GPU the engine runs there by default, with the CPU's answers.

Skipped where there is no GPU (CI, the developers' machines). Run on a GPU machine with
``python -m pytest tests/inference/test_cuda.py``; the engine needs neither Django nor OpenVINO.

GPU and CPU kernels round differently (cuDNN picks its own convolution algorithms), so answers are
compared with tolerances, not bit for bit: same labels, scores within 1e-2, box IoU >= 0.98, mask
IoU >= 0.95 (or at most 16 pixels off), for every detection not within the score tolerance of
the threshold.
"""

import numpy as np
import pytest
import torch

from segmentation.inference import Detection, load_image, load_segmenter, render_overlay
from segmentation.inference.catalog import MASKRCNN, WEIGHTS_FILES, YOLOV7
from segmentation.inference.detection import box_iou, mask_iou
from tests.inference.conftest import random_maskrcnn
from tests.photos import ASTRONAUT, CHELSEA, COFFEE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")

SCORE_TOLERANCE = 1e-2
MIN_BOX_IOU = 0.98
MIN_MASK_IOU = 0.95
#: ...or, for masks of a few dozen pixels (the random Mask R-CNN's thin ones), this many pixels.
MAX_PIXELS_OFF = 16


def assert_same_answers(cpu: list[Detection], gpu: list[Detection], threshold: float) -> None:
    """Every detection of one list has its counterpart in the other (near-threshold ones aside)."""
    for reference, candidates in ((cpu, gpu), (gpu, cpu)):
        for det in reference:
            if det.score - threshold <= SCORE_TOLERANCE:
                continue  # rounding decides on which side of the threshold it falls
            match = max(
                (c for c in candidates if c.label == det.label),
                key=lambda c: box_iou(c.box, det.box),
                default=None,
            )
            assert match is not None, f"no {det.label} {det.score:.3f} on the other device"
            assert abs(match.score - det.score) <= SCORE_TOLERANCE, (det, match)
            assert box_iou(match.box, det.box) >= MIN_BOX_IOU, (det.box, match.box)
            differing = np.logical_xor(match.full_mask(), det.full_mask()).sum()
            assert mask_iou(match, det) >= MIN_MASK_IOU or differing <= MAX_PIXELS_OFF, det.label


@pytest.fixture
def default_environment(monkeypatch, fresh_cache):
    """What a worker on a GPU machine sees with segweb's defaults."""
    monkeypatch.delenv("SEGWEB_DEVICE", raising=False)
    monkeypatch.setenv("SEGWEB_RUNTIME", "auto")


def test_a_gpu_machine_runs_torch_on_cuda_by_default(default_environment):
    segmenter = load_segmenter(YOLOV7)

    assert segmenter.device == "cuda"
    assert segmenter.runtime == "torch"  # OpenVINO is for CPUs only
    assert all(p.is_cuda for p in segmenter.model.parameters())


@pytest.mark.parametrize(
    ("photo", "expected"), [(ASTRONAUT, "person"), (CHELSEA, "cat"), (COFFEE, "cup")]
)
def test_yolo_on_the_gpu_finds_what_it_finds_on_the_cpu(photo, expected, fresh_cache):
    image = load_image(photo)
    cpu = load_segmenter(YOLOV7, device="cpu").predict(image, score_threshold=0.3)
    gpu = load_segmenter(YOLOV7, device="cuda").predict(image, score_threshold=0.3)

    assert expected in {d.label for d in gpu}
    assert_same_answers(cpu, gpu, threshold=0.3)
    assert all(isinstance(d.mask, np.ndarray) for d in gpu)  # no tensors cross the boundary
    assert render_overlay(image, gpu).size == image.size


def test_maskrcnn_on_the_gpu_gives_the_cpus_answers(tmp_path, monkeypatch, fresh_cache):
    torch.save(random_maskrcnn().state_dict(), tmp_path / WEIGHTS_FILES[MASKRCNN])
    monkeypatch.setenv("SEGWEB_WEIGHTS_DIR", str(tmp_path))
    image = load_image(COFFEE)

    cpu = load_segmenter(MASKRCNN, device="cpu").predict(image, score_threshold=0.3)
    gpu_segmenter = load_segmenter(MASKRCNN)  # default device: the GPU
    gpu = gpu_segmenter.predict(image, score_threshold=0.3)

    assert gpu_segmenter.device == "cuda"
    assert len(cpu) >= 3, "the random model must give detections for this test to mean anything"
    assert_same_answers(cpu, gpu, threshold=0.3)
    for det in gpu:
        x0, y0, x1, y1 = det.mask_box
        assert det.mask.shape == (y1 - y0, x1 - x0)  # box-local masks on the GPU path too
