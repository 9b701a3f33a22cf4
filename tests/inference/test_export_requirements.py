"""`make export` (and a worker's background export) needs only the runtime requirements: its
check runs on the photos segweb ships, its INT8 step on nncf, both in requirements.txt."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_requirements import ROOT, modules_outside, runtime_closure

EXPORT = textwrap.dedent(
    """
    import json, os, sys

    BLOCKED = set(json.loads(os.environ["BLOCKED_MODULES"]))

    class OnlyRuntimeRequirements:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if path is None and name in BLOCKED:
                return None
            return self.finder.find_spec(name, path, target)

        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [OnlyRuntimeRequirements(finder) for finder in sys.meta_path]

    from segmentation.inference import export
    photos = export.shipped_photos()
    export.import_nncf()
    print(json.dumps({"photos": sorted(photos), "calibration": len(export.calibration_photos()),
                      "skimage": "skimage" in sys.modules}))
    """
)


@pytest.mark.slow
def test_the_export_needs_only_the_runtime_requirements_and_the_shipped_photos(tmp_path):
    blocked = modules_outside(runtime_closure())
    assert "skimage" in blocked  # the test tools are out of reach
    result = subprocess.run(
        [sys.executable, "-c", EXPORT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BLOCKED_MODULES": json.dumps(blocked)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        "photos": [
            "astronaut.jpg",
            "chelsea.jpg",
            "coffee.jpg",
            "rocket.jpg",
            "rocket.jpg (portrait)",
        ],
        "calibration": 10,
        "skimage": False,
    }
