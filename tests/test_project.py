"""Project-level guarantees: migrations in sync, the web process free of torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.django_db
def test_migrations_are_in_sync_with_the_models():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_settings_refuse_to_start_without_a_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(SEGWEB_DATA_DIR=str(tmp_path), DJANGO_DEBUG="0")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_the_key_make_run_generated_lets_other_commands_start(tmp_path):
    # `make run` prints "SEGWEB_DATA_DIR=... manage.py createsuperuser": no key in the environment.
    (tmp_path / "secret_key").write_text("k" * 50 + "\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(SEGWEB_DATA_DIR=str(tmp_path), DJANGO_DEBUG="0")
    code = (
        "import django; django.setup(); "
        "from django.conf import settings; print(settings.SECRET_KEY)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "k" * 50


def test_the_web_process_never_imports_torch(tmp_path):
    """Sign in, upload, browse and open a job through Django, in a fresh interpreter."""
    code = textwrap.dedent(
        """
        import json, sys, django
        django.setup()
        from django.test.utils import setup_test_environment
        setup_test_environment()
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User
        from django.test import Client
        from tests.photos import COFFEE
        client = Client()
        # force_login: django-axes refuses authenticate() calls without a request (login()).
        client.force_login(User.objects.create_user("alice", password="pw-123456789"))
        with open(COFFEE, "rb") as f:
            response = client.post("/upload/", {"images": f, "score_threshold": "0.5",
                                                "model": "auto"})
        job_url = response["Location"]
        pages = [client.get(u).status_code for u in ("/upload/", "/jobs/", job_url,
                 job_url + "status/", job_url + "image/", "/readyz", "/api/schema/")]
        print(json.dumps({"pages": pages, "torch": "torch" in sys.modules,
                          "cv2": "cv2" in sys.modules}))
        """
    )
    env = {
        # Its own SQLite in tmp_path, whatever database the suite runs on (CI's second pass).
        **{k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")},
        "DJANGO_SETTINGS_MODULE": "segweb.settings",
        "SEGWEB_DATA_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DJANGO_ALLOWED_HOSTS": "testserver",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pages"] == [200] * 7
    assert out["torch"] is False
    assert out["cv2"] is False


def test_every_setting_read_from_the_environment_is_documented():
    """A variable the code reads but the README table and .env.example omit is one nobody finds."""
    import re

    sources = [ROOT / "segweb" / "settings.py", *(ROOT / "segmentation").rglob("*.py")]
    pattern = re.compile(
        r"""(?:env(?:\.\w+)?\(|environ\.get\(|environ\[)["']((?:SEGWEB|DJANGO|AWS|CELERY|DATABASE|CACHE)_[A-Z0-9_]+)"""
    )
    names = {name for path in sources for name in pattern.findall(path.read_text())}
    assert {"SEGWEB_DATA_DIR", "SEGWEB_RUNTIME", "DATABASE_URL"} <= names  # the scan works
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
    assert sorted(n for n in names if not re.search(rf"^#? ?{n}=", example, re.M)) == []


def test_the_tests_hash_passwords_with_a_fast_hasher(owner):
    # PBKDF2's 1,000,000 rounds cost ~0.3 s a hash here, paid by every persona fixture and
    # sign-in: conftest.py swaps in MD5 for the test run (live servers keep the real hasher).
    assert owner.password.startswith("md5$")
