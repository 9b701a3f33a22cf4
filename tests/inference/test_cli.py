"""``python -m segmentation.inference``: JSON lines, a table, overlays, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from tests.photos import CHELSEA, COFFEE

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segmentation.inference", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_json_lines_with_coco_rle_and_overlays(tmp_path):
    result = cli(
        str(COFFEE),
        str(CHELSEA),
        "--model",
        "yolov7_seg",
        "--json",
        "--overlay-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(COFFEE), str(CHELSEA)]
    coffee = lines[0]
    assert (coffee["width"], coffee["height"], coffee["model"]) == (600, 400, "yolov7_seg")
    cup = next(d for d in coffee["detections"] if d["label"] == "cup")
    assert set(cup) == {"label", "score", "box", "segmentation"}
    rle = cup["segmentation"]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert decoded.shape == (400, 600) and decoded.sum() > 10_000
    overlay = Image.open(tmp_path / "out" / "coffee-overlay.png")
    assert overlay.size == (600, 400)
    assert not np.array_equal(np.asarray(overlay), np.asarray(Image.open(COFFEE).convert("RGB")))


def test_table_output_by_default():
    result = cli(str(CHELSEA), "--model", "yolov7_seg")
    assert result.returncode == 0, result.stderr
    assert "cat" in result.stdout and "600" not in result.stdout.splitlines()[0][:5]
    assert "451x300" in result.stdout


def test_bad_path_is_one_line_on_stderr():
    result = cli("/no/such/photo.jpg")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: no such file: /no/such/photo.jpg"]


def test_unknown_model_is_one_line_on_stderr():
    result = cli(str(COFFEE), "--model", "deeplab")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Unknown model 'deeplab'" in result.stderr


def test_missing_weights_are_one_line_on_stderr(tmp_path):
    result = cli(str(COFFEE), "--model", "maskrcnn_resnet50_fpn", SEGWEB_WEIGHTS_DIR=str(tmp_path))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "maskrcnn_resnet50_fpn_coco.pth" in result.stderr


def test_a_file_that_is_not_an_image_fails_that_file_only(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"nope")
    result = cli(str(junk), str(CHELSEA), "--model", "yolov7_seg", "--json")
    assert result.returncode == 1
    assert "junk.jpg" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert json.loads(result.stdout)["image"] == str(CHELSEA)


def test_threshold_out_of_range_is_refused():
    result = cli(str(COFFEE), "--threshold", "2")
    assert result.returncode != 0
    assert "--threshold" in result.stderr
