"""A worker builds a missing OpenVINO export by itself, in the background, and switches to it."""

import logging
import os
import subprocess
import sys
import time

import pytest

from segmentation.inference import background, load_segmenter
from segmentation.inference.catalog import FP32, YOLOV7, manifest_path
from segmentation.inference.export import export_lock
from tests.inference.test_isolation import ROOT, run_python


def wait_for_background_exports(timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while background._running:
        assert time.monotonic() < deadline, "the background export did not finish"
        time.sleep(1)


@pytest.fixture
def auto_export(monkeypatch, fresh_cache):
    """What a worker has: auto runtime, automatic exports; this test's attempts forgotten after."""
    monkeypatch.setenv("SEGWEB_RUNTIME", "auto")
    monkeypatch.setenv("SEGWEB_AUTO_EXPORT", "1")
    yield
    wait_for_background_exports()
    background._next_try.clear()


@pytest.mark.slow
def test_a_worker_builds_the_missing_export_in_the_background_and_switches_to_it(
    auto_export, tmp_path, caplog, photos
):
    with caplog.at_level(logging.INFO, logger="segmentation.inference"):
        first = load_segmenter(YOLOV7, device="cpu", weights_dir=tmp_path, build_export=True)
        assert first.runtime == "torch"  # the job that found no export runs on torch meanwhile
        assert first.predict(photos["coffee"])
        wait_for_background_exports()
    assert "building its FP32 OpenVINO export in the background" in caplog.text
    assert "export ready after" in caplog.text
    assert manifest_path(YOLOV7, tmp_path).is_file()
    following = load_segmenter(YOLOV7, device="cpu", weights_dir=tmp_path, build_export=True)
    assert (following.runtime, following.precision) == ("openvino", "fp32")
    assert not background._running  # nothing left to build
    leftovers = [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    assert leftovers == []


def test_an_export_leaves_at_once_when_another_holds_the_weights_directory(tmp_path):
    with export_lock(tmp_path):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "segmentation.inference.export", "--background",
             "--model", YOLOV7, "--weights-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    assert result.returncode == background.BUSY, result.stderr
    assert "another export is running" in result.stderr
    assert time.monotonic() - started < 120  # no model was loaded
    assert not manifest_path(YOLOV7, tmp_path).exists()


def test_a_background_export_runs_at_the_lowest_priority_and_dies_with_its_parent(tmp_path):
    out = run_python(
        """
        import json, os
        from segmentation.inference.export import _background_mode
        _background_mode()
        print(json.dumps({"idle": os.sched_getscheduler(0) == os.SCHED_IDLE}))
        """,
        tmp_path,
    )
    assert out == {"idle": True}


def test_a_failed_export_is_not_retried_with_the_same_weights_and_packages(
    auto_export, tmp_path, caplog
):
    background.record_failure(YOLOV7, tmp_path, FP32, "the OpenVINO network disagrees with torch")
    assert background.failed_before(YOLOV7, tmp_path, FP32) is not None
    with caplog.at_level(logging.WARNING, logger="segmentation.inference"):
        assert background.request_export(YOLOV7, tmp_path, FP32)
        wait_for_background_exports()
        assert not background.request_export(YOLOV7, tmp_path, FP32)  # not even asked again
    assert "not building its FP32 OpenVINO export again" in caplog.text
    assert "disagrees with torch" in caplog.text
    assert not manifest_path(YOLOV7, tmp_path).exists()


def test_a_failure_recorded_for_other_weights_does_not_stop_a_new_try(tmp_path):
    background.record_failure(YOLOV7, tmp_path, FP32, "refused")
    path = background.failure_path(YOLOV7, tmp_path, FP32)
    path.write_text(path.read_text().replace('"source_sha256": "', '"source_sha256": "0'))
    assert background.failed_before(YOLOV7, tmp_path, FP32) is None


def test_automatic_exports_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGWEB_AUTO_EXPORT", "0")
    assert not background.request_export(YOLOV7, tmp_path, FP32)
    assert not background._running
