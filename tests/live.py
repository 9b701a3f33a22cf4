"""A real segweb, as `make run` starts it: gunicorn + Celery worker on the embedded defaults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a-long-test-passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip


@dataclass
class Segweb:
    """A running `manage.py serve`: its URL, port, process and environment."""

    base: str
    port: int
    process: subprocess.Popen
    env: dict
    log: Path


@contextmanager
def started_segweb(data_dir: Path, **extra_env: str):
    """Start segweb in ``data_dir`` and yield it once it answers; stop it (if still up) after."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))},
        "SEGWEB_DATA_DIR": str(data_dir),
        "DJANGO_SECRET_KEY": "live-test-key",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        **extra_env,
    }
    env.pop("AWS_STORAGE_BUCKET_NAME", None)
    manage(env, "migrate", "--no-input")
    manage(env, "shell", "-c",
           f"from django.contrib.auth.models import User; "
           f"User.objects.create_user('alice', password={PASSWORD!r})")  # fmt: skip
    log = data_dir / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(base, process, log)
            yield Segweb(base, port, process, env, log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def running_segweb(data_dir: Path, **extra_env: str):
    """Start segweb in ``data_dir``; yield its base URL; stop it and its worker afterwards."""
    with started_segweb(data_dir, **extra_env) as segweb:
        yield segweb.base


def processes_of(data_dir: Path) -> list[tuple[int, str]]:
    """Every process (pid, command line) running with ``SEGWEB_DATA_DIR=data_dir``."""
    marker = f"SEGWEB_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours
            continue
        if marker in environ:
            found.append((int(entry.name), cmdline.strip()))
    return found


def _wait_until_up(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"segweb exited early:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or its workers still booting
        time.sleep(0.3)
    raise RuntimeError(f"segweb did not start in 60 s:\n{log.read_text()[-3000:]}")


def signed_in_session(base: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/accounts/login/")
    response = session.post(
        f"{base}/accounts/login/",
        data={"username": "alice", "password": PASSWORD,
              "csrfmiddlewaretoken": session.cookies["csrftoken"]},
    )  # fmt: skip
    response.raise_for_status()
    assert "sessionid" in session.cookies, "sign-in failed"
    return session


def wait_for_job(session: requests.Session, base: str, job_url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = session.get(f"{base}{job_url}status/").json()
        if data["finished"]:
            return data
        time.sleep(0.5)
    raise AssertionError(f"job {job_url} did not finish in {timeout} s")
