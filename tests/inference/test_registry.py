"""Choosing models: auto, availability and reasons, caching."""

import threading
import time

import pytest

from segmentation.inference import (
    ModelUnavailableError,
    list_models,
    load_segmenter,
    registry,
    resolve_model_name,
)
from segmentation.inference.catalog import MASKRCNN, MASKRCNN_V2, YOLOV7


def test_every_model_is_listed_with_why_it_cannot_run(tmp_path):
    models = {m.name: m for m in list_models(weights_dir=tmp_path)}
    assert set(models) == {MASKRCNN, MASKRCNN_V2, YOLOV7}
    assert models[YOLOV7].usable and models[YOLOV7].reason is None
    assert not models[MASKRCNN].usable
    assert "maskrcnn_resnet50_fpn_coco.pth" in models[MASKRCNN].reason


def test_auto_prefers_mask_rcnn_when_its_weights_are_present(maskrcnn_weights_dir, tmp_path):
    assert resolve_model_name(None, weights_dir=maskrcnn_weights_dir) == MASKRCNN
    assert resolve_model_name("auto", weights_dir=maskrcnn_weights_dir) == MASKRCNN
    assert resolve_model_name("auto", weights_dir=tmp_path) == YOLOV7


def test_weights_dir_comes_from_the_environment(maskrcnn_weights_dir, monkeypatch):
    monkeypatch.setenv("SEGWEB_WEIGHTS_DIR", str(maskrcnn_weights_dir))
    assert {m.name: m.usable for m in list_models()}[MASKRCNN]


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelUnavailableError, match="Unknown model 'deeplab'.*yolov7_seg"):
        resolve_model_name("deeplab")


def test_unusable_model_says_why(tmp_path):
    with pytest.raises(ModelUnavailableError, match="cannot run here.*not found"):
        resolve_model_name(MASKRCNN_V2, weights_dir=tmp_path)


def test_models_load_once_per_process_even_from_many_threads(monkeypatch, fresh_cache):
    builds = []

    def slow_build(name, device, weights_dir):
        builds.append(name)
        time.sleep(0.2)  # long enough for every thread to arrive while the first one loads
        return object()

    monkeypatch.setattr(registry, "_build", slow_build)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_segmenter(YOLOV7, device="cpu")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [YOLOV7]
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ModelUnavailableError, match="no CUDA GPU"):
        load_segmenter(YOLOV7, device="cuda")


@pytest.mark.slow
def test_threshold_outside_0_1_is_refused(yolo, photos):
    with pytest.raises(ValueError, match="score_threshold"):
        yolo.predict(photos["coffee"], score_threshold=1.5)
