"""gunicorn settings for the web processes: ``gunicorn -c deploy/gunicorn.conf.py segweb.wsgi``.

Used by deploy/segweb-web.service and by the real-process tests (tests/scale), so what CI runs is
what production runs. Values can be overridden on the command line (``--bind``, ``--workers``).
"""

import os

bind = os.environ.get("SEGWEB_BIND", "127.0.0.1:8000")
# The web side only validates photos, stores them and answers the API: no model, no torch. Two
# processes of four threads each keep a core busy while others wait on S3 or PostgreSQL.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("SEGWEB_WEB_THREADS", "4"))
# nginx buffers the whole upload before passing it on (proxy_request_buffering), so a slow client
# never holds a thread; 120 s covers decoding a 40 MP photo plus the S3 retries (3 attempts).
timeout = 120
graceful_timeout = 30
keepalive = 5
worker_tmp_dir = "/dev/shm"  # noqa: S108 - the heartbeat file off a possibly slow disk
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
