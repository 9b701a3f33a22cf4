"""Repository-wide pytest set-up.

The environment is prepared here, before Django reads its settings: pytest.ini deliberately does
not name DJANGO_SETTINGS_MODULE, so pytest-django waits for this file instead of loading the
settings before any conftest could run.
"""

import os
import tempfile

# Tests run with DEBUG off, like production; the key only has to exist.
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")
# Local state (queue folders, SQLite file) of the test run goes to a throwaway directory.
os.environ.setdefault("SEGWEB_DATA_DIR", tempfile.mkdtemp(prefix="segweb-tests-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")

import django.conf

django.conf.settings.INSTALLED_APPS  # noqa: B018 - load them now; pytest-django sets Django up
