"""The engine stays out of everyone's way: no Django, no leaked YOLO modules, no network."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segmentation.inference.coco import COCO_LABELS, TORCHVISION_CATEGORIES

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, tmp_path: Path, **env: str) -> dict:
    """Run code in a fresh interpreter, from a foreign directory; return its last JSON line."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_engine_loads_neither_django_nor_torch(tmp_path):
    out = run_python(
        """
        import json, sys
        import segmentation.inference as engine
        engine.list_models(); engine.inspect_image
        print(json.dumps({"django": "django" in sys.modules, "torch": "torch" in sys.modules}))
        """,
        tmp_path,
    )
    assert out == {"django": False, "torch": False}


@pytest.mark.slow
def test_running_a_model_never_loads_django(tmp_path):
    out = run_python(
        """
        import json, sys
        from PIL import Image
        from segmentation.inference import load_segmenter, render_overlay
        image = Image.new("RGB", (64, 64))
        render_overlay(image, load_segmenter("yolov7_seg").predict(image))
        print(json.dumps({"django": "django" in sys.modules}))
        """,
        tmp_path,
    )
    assert out == {"django": False}


@pytest.mark.slow
def test_loading_yolo_leaves_no_trace_in_the_process(tmp_path):
    # Our own top-level ``utils`` package must stay ours, before and after.
    (tmp_path / "mine" / "utils").mkdir(parents=True)
    (tmp_path / "mine" / "utils" / "__init__.py").write_text("OURS = True\n")
    out = run_python(
        """
        import json, os, sys
        sys.path.insert(0, os.path.join(os.getcwd(), "mine"))
        import utils
        import cv2, numpy as np, torch  # cv2 sets LD_LIBRARY_PATH itself on import
        before = {
            "path": list(sys.path), "env": dict(os.environ),
            "numpy": repr(np.get_printoptions()), "threads": torch.get_num_threads(),
        }
        from segmentation.inference import load_segmenter
        from PIL import Image
        segmenter = load_segmenter("yolov7_seg", device="cpu")
        segmenter.predict(Image.new("RGB", (64, 64)))
        print(json.dumps({
            "path_unchanged": sys.path == before["path"],
            "env_changes": sorted(k for k in set(os.environ) | set(before["env"])
                                  if os.environ.get(k) != before["env"].get(k)),
            "utils_is_ours": getattr(sys.modules["utils"], "OURS", False),
            "stray_modules": sorted(m for m in sys.modules
                                    if m.split(".")[0] == "models" or m.startswith("utils.")),
            "numpy_unchanged": repr(np.get_printoptions()) == before["numpy"],
            "threads": torch.get_num_threads(),
            "cpus": len(os.sched_getaffinity(0)),
            "config_dir_created": os.path.exists(os.path.expanduser("~/.config/Ultralytics")),
        }))
        """,
        tmp_path,
    )
    assert out["path_unchanged"]
    assert out["env_changes"] == []
    assert out["utils_is_ours"] is True
    assert out["stray_modules"] == []
    assert out["numpy_unchanged"]
    assert out["threads"] == out["cpus"]
    assert not out["config_dir_created"]


def test_the_yolo_checkpoint_loader_refuses_foreign_globals(tmp_path):
    import pickle

    import torch

    from segmentation.inference import WeightsError
    from segmentation.inference.yolo import _import_package, load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(WeightsError, match="forbidden"):
        load_checkpoint(path, _import_package())
    assert not (tmp_path / "pwned").exists()


def test_sockets_are_blocked_during_tests():
    with pytest.raises(Exception, match="(?i)socket|blocked"):
        socket.create_connection(("203.0.113.1", 80), timeout=1)


def test_our_coco_categories_are_torchvisions():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    assert list(TORCHVISION_CATEGORIES) == MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert len(COCO_LABELS) == 80


@pytest.mark.slow
def test_yolo_class_names_map_to_the_same_coco_names(yolo):
    names = yolo.model.names
    assert list(names.values() if isinstance(names, dict) else names) == list(COCO_LABELS)
