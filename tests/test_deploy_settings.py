"""Production settings from the environment alone: PostgreSQL, Redis and recovery timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHOW = (
    "import json; from django.conf import settings as s; print(json.dumps({"
    "'db': s.DATABASES['default'], 'broker': s.CELERY_BROKER_TRANSPORT_OPTIONS,"
    "'sweep': s.CELERY_BEAT_SCHEDULE['sweep-jobs']['schedule'], 'segweb': s.SEGWEB}, default=str))"
)


def settings_with(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SHOW],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SEGWEB_DATA_DIR": str(tmp_path), **env},
    )  # fmt: skip


def test_postgresql_redis_and_recovery_come_from_the_environment(tmp_path):
    result = settings_with(
        tmp_path,
        DATABASE_URL="postgres://segweb:pw@db.internal:5432/segweb",
        CELERY_BROKER_URL="redis://redis.internal:6379/2",
        SEGWEB_REDIS_KEY_PREFIX="staging:",
        SEGWEB_STALE_AFTER_SECONDS="120",
        SEGWEB_SWEEP_INTERVAL_SECONDS="15",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["db"]["ENGINE"] == "django.db.backends.postgresql"
    assert shown["db"]["OPTIONS"]["connect_timeout"] == 5  # a dead database fails fast
    assert shown["broker"]["global_keyprefix"] == "staging:"
    assert shown["broker"]["socket_connect_timeout"] == 3
    assert shown["broker"]["socket_timeout"] == 10
    assert shown["sweep"] == 15
    assert shown["segweb"]["STALE_AFTER_SECONDS"] == 120


def test_a_stale_limit_shorter_than_three_heartbeats_is_refused(tmp_path):
    result = settings_with(tmp_path, SEGWEB_HEARTBEAT_SECONDS="10", SEGWEB_STALE_AFTER_SECONDS="20")
    assert result.returncode != 0
    assert "SEGWEB_STALE_AFTER_SECONDS must be at least 3" in result.stderr
