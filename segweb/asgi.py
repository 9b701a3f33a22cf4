"""ASGI entry point, for servers that prefer it (uvicorn, daphne)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")
application = get_asgi_application()
