"""`make export` (and a worker's background export) needs only the runtime requirements: its
check runs on the photos segweb ships, its INT8 step on nncf, both in requirements.txt."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_requirements import (
    ONLY_RUNTIME_REQUIREMENTS,
    ROOT,
    modules_outside,
    runtime_closure,
)

EXPORT = ONLY_RUNTIME_REQUIREMENTS + textwrap.dedent(
    """
    import json, sys

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
