"""WSGI entry point: ``gunicorn segweb.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")
application = get_wsgi_application()
