"""Repository-wide pytest set-up.

The environment is prepared here, before Django reads its settings: pytest.ini deliberately does
not name DJANGO_SETTINGS_MODULE, so pytest-django waits for this file instead of loading the
settings before any conftest could run.
"""

import os
import tempfile

# Tests run with DEBUG off, like production; the key only has to exist.
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")
# Local state (queue folders, SQLite file) of the test run goes to a throwaway directory, never
# to the data directory of a segweb running beside it (the Makefile exports SEGWEB_DATA_DIR).
os.environ["SEGWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="segweb-tests-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")
# Workers build missing OpenVINO exports in the background; in tests, only where a test asks
# for it (tests/inference/test_background.py), never a model conversion beside the suite.
os.environ["SEGWEB_AUTO_EXPORT"] = "0"
# CI's second pass (`make test-scale`) names a PostgreSQL server: the suite then runs on it. Where
# none answers, the suite stays on SQLite and the PostgreSQL tests skip, saying so.
if os.environ.get("SEGWEB_TEST_POSTGRES_URL") and "DATABASE_URL" not in os.environ:
    from tests.scale.stack import POSTGRES_URL, postgres_unavailable

    if postgres_unavailable() is None:
        os.environ["DATABASE_URL"] = POSTGRES_URL

import django.conf

django.conf.settings.INSTALLED_APPS  # noqa: B018 - load them now; pytest-django sets Django up
# Every persona fixture and sign-in hashes a password: PBKDF2's 1,000,000 rounds cost ~0.3 s a
# time on these machines. Tests check who may do what, not the hasher (live servers keep the
# real one).
django.conf.settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
