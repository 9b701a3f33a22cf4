"""``python -m segmentation.inference``: JSON lines, a table, overlays, one-line errors.

The command is run through ``main(argv)`` in this process (no new interpreter, no second model
load), except once, end to end, as a real ``python -m`` process.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from segmentation.inference.__main__ import main
from tests.photos import CHELSEA, COFFEE

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run the command in this process; the result reads like the real process's."""
    returncode = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, captured.out, captured.err)


@pytest.mark.slow
def test_json_lines_with_coco_rle_and_overlays(tmp_path):
    # The one run as a real process: ``python -m`` finds main, its exit status and the streams
    # are the process's own, and nothing but JSON reaches stdout while the model loads.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segmentation.inference",
            str(COFFEE),
            str(CHELSEA),
            "--model",
            "yolov7_seg",
            "--json",
            "--overlay-dir",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
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


@pytest.mark.slow
@pytest.mark.usefixtures("yolo")  # main() finds the session's model in the cache
def test_table_output_by_default(capsys):
    result = cli(capsys, str(CHELSEA), "--model", "yolov7_seg")
    assert result.returncode == 0, result.stderr
    assert "cat" in result.stdout and "600" not in result.stdout.splitlines()[0][:5]
    assert "451x300" in result.stdout


def test_bad_path_is_one_line_on_stderr(capsys):
    result = cli(capsys, "/no/such/photo.jpg")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: no such file: /no/such/photo.jpg"]


def test_unknown_model_is_one_line_on_stderr(capsys):
    result = cli(capsys, str(COFFEE), "--model", "deeplab")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Unknown model 'deeplab'" in result.stderr


def test_missing_weights_are_one_line_on_stderr(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGWEB_WEIGHTS_DIR", str(tmp_path))
    result = cli(capsys, str(COFFEE), "--model", "maskrcnn_resnet50_fpn")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "maskrcnn_resnet50_fpn_coco.pth" in result.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("yolo")  # main() finds the session's model in the cache
def test_a_file_that_is_not_an_image_fails_that_file_only(capsys, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"nope")
    result = cli(capsys, str(junk), str(CHELSEA), "--model", "yolov7_seg", "--json")
    assert result.returncode == 1
    assert "junk.jpg" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert json.loads(result.stdout)["image"] == str(CHELSEA)


def test_threshold_out_of_range_is_refused(capsys):
    result = cli(capsys, str(COFFEE), "--threshold", "2")
    assert result.returncode != 0
    assert "--threshold" in result.stderr
