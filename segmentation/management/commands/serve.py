"""``manage.py serve``: the web server and a worker together, for one machine (``make run``).

Production runs them separately (gunicorn, ``celery worker``, ``celery beat``); see the README.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve segweb on one machine: gunicorn (web) and a Celery worker with its scheduler."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument(
            "--concurrency",
            type=int,
            default=int(os.environ.get("WORKERS", "1")),
            help="worker processes (each loads its own model); default $WORKERS, else 1",
        )

    def handle(self, *args, host: str, port: int, web_workers: int, concurrency: int, **kw):
        bin_dir = os.path.dirname(sys.executable)
        data_dir = settings.DATA_DIR
        commands = {
            "web": [
                os.path.join(bin_dir, "gunicorn"), "segweb.wsgi",
                "--bind", f"{host}:{port}", "--workers", str(web_workers), "--threads", "4",
                "--timeout", "120", "--access-logfile", "-", "--worker-tmp-dir", "/dev/shm",  # noqa: S108 - gunicorn's advice
            ],
            "worker": [
                os.path.join(bin_dir, "celery"), "-A", "segweb", "worker", "--beat",
                "--concurrency", str(concurrency), "--loglevel", "INFO",
                "--hostname", f"worker-{port}@%h",
                "--schedule", str(data_dir / "celerybeat-schedule"),
                "--without-mingle", "--without-gossip",
            ],
        }  # fmt: skip
        # Several worker processes share the cores (segweb/celery.py divides the threads).
        processes = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(f"\nsegweb is starting on {url} (data in {data_dir})\n")
            + "Create the first user (an administrator) from another terminal with:\n"
            f"    SEGWEB_DATA_DIR={data_dir} .venv/bin/python manage.py createsuperuser\n"
            "Stop with Ctrl-C.\n"
        )
        stopping = False

        def stop(signum, _frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    self.stderr.write(f"{name} exited with status {process.returncode}; stopping.")
                    exit_code = process.returncode or 1
                    stopping = True
            time.sleep(0.5)
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 20
        for process in processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
        sys.exit(exit_code)
