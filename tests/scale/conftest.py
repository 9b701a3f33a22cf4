"""Real processes on PostgreSQL, Redis and S3: ``make test-scale`` (CI's second pass).

Every test here is marked ``scale`` (``make test`` leaves them out). Without PostgreSQL or Redis
they are skipped, saying which service is missing; SeaweedFS comes from the venv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scale.stack import Stack, TemporaryDatabase, postgres_unavailable, redis_unavailable

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.scale)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """A fresh database and broker namespace; gunicorn, two worker nodes and beat."""
    for reason in (postgres_unavailable(), redis_unavailable()):
        if reason:
            pytest.skip(reason)
    seaweedfs = request.getfixturevalue("seaweedfs")  # started only when it will be used
    database = TemporaryDatabase()
    database.create()
    stack = Stack(
        tmp_path_factory.mktemp("stack"), database=database, s3_env=seaweedfs.environment()
    )
    try:
        stack.prepare()
        stack.start_web()
        stack.start_worker("w1")
        stack.start_worker("w2")
        stack.start_beat()
        stack.wait_for_workers("w1", "w2")
        yield stack
    finally:
        stack.stop()
        database.drop()
