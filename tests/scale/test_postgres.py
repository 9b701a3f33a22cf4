"""The second pass really runs the suite on PostgreSQL (conftest.py switches DATABASE_URL)."""

import os

import pytest
from django.db import connection

from tests.scale.stack import postgres_unavailable


@pytest.mark.django_db
def test_the_suite_runs_on_postgresql():
    if not os.environ.get("SEGWEB_TEST_POSTGRES_URL"):
        pytest.skip("SEGWEB_TEST_POSTGRES_URL not set: the suite runs on SQLite (make test-scale)")
    if reason := postgres_unavailable():
        pytest.skip(reason)
    assert connection.vendor == "postgresql"
