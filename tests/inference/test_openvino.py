"""The OpenVINO runtime gives the torch runtime's answers, or is not used at all.

Both models are exported once per session into a temporary weights directory (Mask R-CNN with the
seeded random weights of ``random_maskrcnn``), through the same ``export_model`` that ``make
export`` runs.
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segmentation.inference import ModelUnavailableError, load_segmenter
from segmentation.inference import yolo as yolo_module
from segmentation.inference.agreement import (
    Agreement,
    ExportRefusedError,
    compare_detections,
    describe,
)
from segmentation.inference.catalog import MASKRCNN, WEIGHTS_FILES, YOLOV7
from segmentation.inference.detection import box_iou
from segmentation.inference.export import export_model
from segmentation.inference.photos import shipped_photos
from segmentation.inference.runtime import choose_runtime
from tests.inference.conftest import random_maskrcnn
from tests.inference.test_isolation import run_python

CHECK_PHOTOS = ("astronaut.jpg",)  # (+ itself as a portrait): enough for an export here
MASKRCNN_THRESHOLDS = (0.25, 0.3, 0.4)  # random weights score ~0.2-0.5
YOLO_THRESHOLDS = (0.25, 0.5)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A weights directory with random Mask R-CNN weights and both models exported to OpenVINO."""
    directory = tmp_path_factory.mktemp("exported")
    torch.save(random_maskrcnn().state_dict(), directory / WEIGHTS_FILES[MASKRCNN])
    # One photo is enough for the export's own check here: the tests below compare more.
    photos = shipped_photos(CHECK_PHOTOS)
    export_model(MASKRCNN, weights_dir=directory, photos=photos, thresholds=(0.3,))
    export_model(YOLOV7, weights_dir=directory, photos=photos, thresholds=YOLO_THRESHOLDS)
    return directory


@pytest.fixture(scope="session")
def more_photos(photos):
    """The shared photos plus a portrait one (other input shapes for the exported graphs)."""
    return {**photos, "coffee portrait": photos["coffee"].transpose(Image.Transpose.ROTATE_90)}


@pytest.fixture(scope="session")
def reference_answers():
    """The torch runtime's answers, per (model, photo), at the lowest threshold used."""
    return {}


def torch_answers(reference_answers, name, weights_dir, photos, photo, lowest):
    key = (name, photo)
    if key not in reference_answers:
        segmenter = load_segmenter(name, device="cpu", weights_dir=weights_dir, runtime="torch")
        assert segmenter.runtime == "torch"
        reference_answers[key] = segmenter.predict(photos[photo], score_threshold=lowest)
    return reference_answers[key]


def assert_same_answers(expected, found, threshold):
    agreement = Agreement()
    assert compare_detections(expected, found, threshold=threshold, agreement=agreement) == []
    assert [d.label for d in found] == [d.label for d in expected]
    assert agreement.detections == len(expected)
    assert agreement.max_score_delta <= 1e-4
    assert agreement.min_mask_iou >= 0.98
    # Box IoU >= 0.99, except boxes a fraction of a pixel wide (compare_detections allows 0.01 px)
    for exp, got in zip(expected, found, strict=True):
        assert np.allclose(exp.box, got.box, atol=0.01) or box_iou(exp.box, got.box) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["astronaut", "coffee portrait"])  # chelsea: 0 random detections
def test_openvino_gives_torchs_mask_rcnn_detections_at_every_threshold(
    exported, more_photos, reference_answers, photo
):
    photos = more_photos
    lowest = min(MASKRCNN_THRESHOLDS)
    everything = torch_answers(reference_answers, MASKRCNN, exported, photos, photo, lowest)
    segmenter = load_segmenter(MASKRCNN, device="cpu", weights_dir=exported, runtime="openvino")
    assert segmenter.runtime == "openvino"
    for threshold in MASKRCNN_THRESHOLDS:
        expected = [d for d in everything if d.score >= threshold]
        found = segmenter.predict(photos[photo], score_threshold=threshold)
        assert_same_answers(expected, found, threshold)
    assert len(everything) >= 3, "the random model must detect something for this to mean anything"


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee", "coffee portrait"])
def test_openvino_gives_torchs_yolo_detections_at_every_threshold(
    exported, more_photos, reference_answers, photo
):
    photos = more_photos
    lowest = min(YOLO_THRESHOLDS)
    everything = torch_answers(reference_answers, YOLOV7, exported, photos, photo, lowest)
    segmenter = load_segmenter(YOLOV7, device="cpu", weights_dir=exported, runtime="openvino")
    assert segmenter.runtime == "openvino"
    for threshold in YOLO_THRESHOLDS:
        expected = [d for d in everything if d.score >= threshold]
        found = segmenter.predict(photos[photo], score_threshold=threshold)
        assert_same_answers(expected, found, threshold)
    assert everything, "YOLO finds the person, the cat and the cup"


def test_auto_uses_openvino_on_a_cpu_and_torch_on_a_gpu():
    assert choose_runtime("auto", "cpu") == "openvino"
    assert choose_runtime("auto", "cuda") == "torch"
    assert choose_runtime("auto", "cuda:1") == "torch"
    assert choose_runtime("torch", "cpu") == "torch"
    with pytest.raises(ModelUnavailableError, match="SEGWEB_DEVICE=cpu"):
        choose_runtime("openvino", "cuda")


@pytest.mark.slow
def test_segweb_runtime_picks_the_runtime(exported, monkeypatch, fresh_cache):
    monkeypatch.setenv("SEGWEB_RUNTIME", "torch")
    assert load_segmenter(YOLOV7, device="cpu", weights_dir=exported).runtime == "torch"
    monkeypatch.setenv("SEGWEB_RUNTIME", "openvino")
    assert load_segmenter(YOLOV7, device="cpu", weights_dir=exported).runtime == "openvino"
    monkeypatch.setenv("SEGWEB_RUNTIME", "auto")
    assert load_segmenter(YOLOV7, device="cpu", weights_dir=exported).runtime == "openvino"
    monkeypatch.setenv("SEGWEB_RUNTIME", "tensorrt")
    with pytest.raises(ModelUnavailableError, match="Unknown runtime 'tensorrt'"):
        load_segmenter(YOLOV7, device="cpu", weights_dir=exported)


def link_export(source: Path, target: Path, name: str) -> None:
    """Make ``target`` hold ``name``'s export from ``source`` (manifest copied, files linked)."""
    target.mkdir(exist_ok=True)
    manifest = json.loads((source / f"{name}.openvino.json").read_text())
    for key in ("xml", "bin"):
        (target / manifest[key]).symlink_to(source / manifest[key])
    shutil.copy(source / f"{name}.openvino.json", target)


@pytest.mark.slow
def test_a_missing_export_falls_back_to_torch_with_a_log_line(
    maskrcnn_weights_dir, caplog, fresh_cache
):
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        segmenter = load_segmenter(
            MASKRCNN, device="cpu", weights_dir=maskrcnn_weights_dir, runtime="openvino"
        )
    assert segmenter.runtime == "torch"
    assert "no FP32 OpenVINO export" in caplog.text
    assert "python -m segmentation.inference.export --model maskrcnn_resnet50_fpn" in caplog.text


@pytest.mark.slow
def test_an_export_of_other_weights_falls_back_to_torch(exported, tmp_path, caplog, fresh_cache):
    link_export(exported, tmp_path, MASKRCNN)
    torch.save(random_maskrcnn(seed=1).state_dict(), tmp_path / WEIGHTS_FILES[MASKRCNN])
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        segmenter = load_segmenter(MASKRCNN, device="cpu", weights_dir=tmp_path, runtime="auto")
    assert segmenter.runtime == "torch"
    assert "stale" in caplog.text and "maskrcnn_resnet50_fpn_coco.pth changed" in caplog.text


@pytest.mark.slow
def test_an_export_made_by_other_package_versions_falls_back_to_torch(
    exported, tmp_path, caplog, fresh_cache
):
    link_export(exported, tmp_path, YOLOV7)
    manifest_file = tmp_path / f"{YOLOV7}.openvino.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["fingerprint"]["openvino"] = "2024.0.0"
    manifest_file.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        segmenter = load_segmenter(YOLOV7, device="cpu", weights_dir=tmp_path, runtime="openvino")
    assert segmenter.runtime == "torch"
    assert "stale (openvino: 2024.0.0 ->" in caplog.text


@pytest.mark.slow
def test_a_damaged_export_falls_back_to_torch(exported, tmp_path, caplog, fresh_cache):
    link_export(exported, tmp_path, YOLOV7)
    manifest = json.loads((tmp_path / f"{YOLOV7}.openvino.json").read_text())
    xml = tmp_path / manifest["xml"]
    xml.unlink()
    xml.write_text("<net>truncated")
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        segmenter = load_segmenter(YOLOV7, device="cpu", weights_dir=tmp_path, runtime="openvino")
    assert segmenter.runtime == "torch"
    assert "OpenVINO cannot load" in caplog.text


def corrupted_yolo(exported):
    """A stand-in for YOLO's ``convert`` whose network is the real export with scores off by 5%."""
    import openvino.opset13 as ops

    from segmentation.inference.openvino_runtime import core

    manifest = json.loads((exported / f"{YOLOV7}.openvino.json").read_text())

    def convert(segmenter, example):
        model = core().read_model(str(exported / manifest["xml"]), str(exported / manifest["bin"]))
        pred, proto = (result.get_node().input_value(0) for result in model.outputs)
        scaled = ops.multiply(pred, ops.constant(np.float32(1.05)))
        graph = type(model)([scaled.output(0), proto], model.get_parameters())
        return graph, manifest["config"]

    return convert


@pytest.mark.slow
def test_export_refuses_a_network_that_disagrees_and_installs_nothing(
    exported, photos, tmp_path, monkeypatch
):
    monkeypatch.setattr(yolo_module.FAMILY, "convert", corrupted_yolo(exported))
    with pytest.raises(ExportRefusedError, match="disagrees with torch"):
        export_model(YOLOV7, weights_dir=tmp_path, photos={"coffee": photos["coffee"]})
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_a_refused_export_leaves_the_installed_one_in_use(exported, photos, tmp_path, monkeypatch):
    link_export(exported, tmp_path, YOLOV7)
    manifest = (tmp_path / f"{YOLOV7}.openvino.json").read_text()
    files = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(yolo_module.FAMILY, "convert", corrupted_yolo(exported))
    with pytest.raises(ExportRefusedError):
        export_model(YOLOV7, weights_dir=tmp_path, photos={"coffee": photos["coffee"]}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == files
    assert (tmp_path / f"{YOLOV7}.openvino.json").read_text() == manifest


@pytest.mark.slow
def test_an_export_that_is_up_to_date_is_not_redone(exported, monkeypatch):
    def fail(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(yolo_module.FAMILY, "convert", fail)
    manifest = export_model(YOLOV7, weights_dir=exported, photos={})
    assert manifest.xml.is_file()
    assert manifest.verification["photos"] == ["astronaut.jpg", "astronaut.jpg (portrait)"]


@pytest.mark.slow
def test_detections_that_differ_are_reported(yolo, photos):
    detections = yolo.predict(photos["coffee"], score_threshold=0.3)
    assert len(detections) >= 2
    assert compare_detections(detections, detections, threshold=0.3) == []
    problems = compare_detections(detections, detections[1:], threshold=0.3)
    assert problems == [f"missing {describe(detections[0])}"]


def test_the_web_side_of_the_engine_never_imports_openvino(tmp_path):
    out = run_python(
        """
        import json, sys
        import segmentation.inference as engine
        from segmentation.inference import runtime
        engine.list_models(); runtime.requested_runtime(); runtime.openvino_installed()
        print(json.dumps({"openvino": "openvino" in sys.modules, "torch": "torch" in sys.modules}))
        """,
        tmp_path,
    )
    assert out == {"openvino": False, "torch": False}


def test_openvino_never_phones_home(tmp_path):
    # Unless the user opted out in ~/intel, importing openvino and converting a model report
    # usage to Google Analytics (and create ~/intel). segweb imports it with that switched off.
    out = run_python(
        """
        import json, os, sys, torch
        from segmentation.inference.ov import ov
        ov.convert_model(torch.nn.Conv2d(3, 3, 3), example_input=torch.zeros(1, 3, 8, 8))
        print(json.dumps({"telemetry": "openvino_telemetry" in sys.modules,
                          "intel": os.path.exists(os.path.expanduser("~/intel"))}))
        """,
        tmp_path,
    )
    assert out == {"telemetry": False, "intel": False}


def test_openvino_compiles_in_fp32_unpinned_by_default(monkeypatch):
    from segmentation.inference.openvino_runtime import compile_config

    monkeypatch.delenv("SEGWEB_OPENVINO_PINNING", raising=False)
    monkeypatch.setenv("SEGWEB_OPENVINO_THREADS", "3")
    config = compile_config()
    assert config["INFERENCE_PRECISION_HINT"] == "f32"
    assert config["ENABLE_CPU_PINNING"] is False
    assert config["INFERENCE_NUM_THREADS"] == 3
    assert config["CPU_RUNTIME_CACHE_CAPACITY"] > 0


@pytest.fixture(scope="session")
def exported_int8(exported):
    """``exported`` plus YOLOv7-seg's INT8 export (calibrated on the shipped photos)."""
    export_model(
        YOLOV7, weights_dir=exported, precision="int8", photos=shipped_photos(CHECK_PHOTOS)
    )
    return exported


@pytest.mark.slow
def test_int8_runs_where_asked_and_finds_what_torch_finds(
    exported_int8, photos, reference_answers, fresh_cache
):
    from segmentation.inference.agreement import Reproduction

    segmenter = load_segmenter(
        YOLOV7, device="cpu", weights_dir=exported_int8, runtime="auto", precision="int8"
    )
    assert (segmenter.runtime, segmenter.precision) == ("openvino", "int8")
    reproduction = Reproduction()
    for photo in ("astronaut", "chelsea", "coffee"):
        expected = torch_answers(reference_answers, YOLOV7, exported_int8, photos, photo, 0.25)
        reproduction.add(
            [d for d in expected if d.score >= 0.5],
            segmenter.predict(photos[photo], score_threshold=0.5),
        )
    assert reproduction.reference >= 3
    assert reproduction.share >= 0.8, reproduction.as_dict()


@pytest.mark.slow
def test_int8_without_its_export_runs_the_fp32_export_with_a_log_line(
    exported, tmp_path, caplog, fresh_cache
):
    link_export(exported, tmp_path, YOLOV7)
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        segmenter = load_segmenter(
            YOLOV7, device="cpu", weights_dir=tmp_path, runtime="auto", precision="int8"
        )
    assert (segmenter.runtime, segmenter.precision) == ("openvino", "fp32")
    assert "runs the FP32 OpenVINO export, not INT8" in caplog.text
    assert "--precision int8" in caplog.text
