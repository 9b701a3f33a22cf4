"""``manage.py serve``: the web server and a worker together, for one machine (``make run``).

Production runs them separately under a supervisor (gunicorn, ``celery worker``, ``celery beat``
as systemd units; see docs/deploy.md). Here this command is the supervisor, and it keeps one
promise: **segweb runs whole or not at all**. If the web server or the worker dies, whatever the
cause (a crash, the kernel's out-of-memory killer, a ``kill -9``), the other part is stopped too,
with everything each had started (gunicorn's workers, Celery's pool and its embedded beat), and
the command exits non-zero saying which part died. Nothing is left holding the port or taking
jobs, and running ``make run`` again starts clean; a job the dead worker held is queued again by
the recovery sweep. If this command itself is killed, the kernel tells each part to stop
(``PR_SET_PDEATHSIG``), and they do.

Each part runs in a process group of its own, so that stopping it reaches its children, and so
that Ctrl-C reaches this command only, which then stops the parts in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

#: Seconds a part gets to stop by itself (a worker finishing its photo) before it is killed.
STOP_TIMEOUT = 30
_PR_SET_PDEATHSIG = 1


def _stop_when_parent_dies(parent: int) -> None:
    """In the child, before exec: ask the kernel for SIGTERM when ``parent`` goes (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


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
                # Names, schedule and queue files are per port and data directory: two instances
                # side by side share no control channel, lock or file.
                "--hostname", f"worker-{port}@%h",
                "--schedule", str(data_dir / "celerybeat-schedule"),
                "--without-mingle", "--without-gossip",
            ],
        }  # fmt: skip
        stopping = False

        def stop(signum, _frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        me = os.getpid()
        # Several worker processes share the cores (segweb/celery.py divides the threads).
        parts = {
            name: subprocess.Popen(
                command,
                process_group=0,
                preexec_fn=lambda: _stop_when_parent_dies(me),  # safe: no threads yet
            )
            for name, command in commands.items()
        }
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(f"\nsegweb is starting on {url} (data in {data_dir})\n")
            + "Create the first user (an administrator) from another terminal with:\n"
            f"    SEGWEB_DATA_DIR={data_dir} .venv/bin/python manage.py createsuperuser\n"
            "Stop with Ctrl-C.\n"
        )
        exit_code = 0
        while not stopping:
            for name, part in parts.items():
                if part.poll() is not None:
                    how = (
                        f"was killed by signal {-part.returncode}"
                        if part.returncode < 0
                        else f"exited with status {part.returncode}"
                    )
                    self.stderr.write(f"segweb's {name} {how}; stopping everything.")
                    exit_code = 1
                    stopping = True
                    break
            else:
                time.sleep(0.5)
        self._stop(parts)
        sys.exit(exit_code)

    def _stop(self, parts: dict[str, subprocess.Popen]) -> None:
        """Ask each part to stop, wait for it, then kill whatever is left in its group."""
        for part in parts.values():
            if part.poll() is None:
                part.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for part in parts.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                part.wait(timeout=max(deadline - time.monotonic(), 0.1))
        # A part that died (or would not stop) can leave children behind: Celery's pool and
        # beat outlive a killed worker process, and hold the queue and the schedule. Children of
        # a part that stopped normally are let finish first.
        self._wait_for_groups(parts, 5)
        for name, part in parts.items():
            if _group_alive(part.pid):
                self.stderr.write(f"stopping what is left of segweb's {name}")
                _kill_group(part.pid, signal.SIGTERM)
        self._wait_for_groups(parts, 5)
        for part in parts.values():
            _kill_group(part.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                part.wait(timeout=1)

    @staticmethod
    def _wait_for_groups(parts: dict[str, subprocess.Popen], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(_group_alive(p.pid) for p in parts.values()):
            time.sleep(0.1)
