"""segweb as production runs it, on one machine: gunicorn, Celery workers and beat as separate
processes, on PostgreSQL, Redis and S3 (SeaweedFS).

The database is a fresh one made for the run (dropped afterwards); the broker's keys carry a prefix
of the run's own, so that runs sharing a Redis never see each other's messages. The broker is
reached through ``TcpProxy``, which the fault tests cut to play a broker outage.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "a-long-test-passphrase"
POSTGRES_URL = os.environ.get(
    "SEGWEB_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SEGWEB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
METRICS_TOKEN = "scale-test-metrics-token"

# Recovery timings shortened so that the fault tests take seconds, not minutes (production
# defaults: heartbeat 10 s, stale after 60 s, sweep every 30 s, re-publish after 600 s).
FAST_RECOVERY = {
    "SEGWEB_HEARTBEAT_SECONDS": "1",
    "SEGWEB_STALE_AFTER_SECONDS": "6",
    "SEGWEB_SWEEP_INTERVAL_SECONDS": "2",
    "SEGWEB_REQUEUE_AFTER_SECONDS": "15",
}


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True).close()
    except Exception as exc:  # noqa: BLE001 - any reason means "skip"
        return f"PostgreSQL not reachable at {POSTGRES_URL} ({_first_line(exc)})"
    return None


def redis_unavailable() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis not reachable at {REDIS_URL} ({_first_line(exc)})"
    return None


class TemporaryDatabase:
    """A PostgreSQL database of its own for one stack, on the server of ``POSTGRES_URL``."""

    def __init__(self) -> None:
        self.name = f"segweb_scale_{uuid.uuid4().hex[:10]}"
        parts = urlsplit(POSTGRES_URL)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def query(self, sql: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()


class TcpProxy:
    """A loopback TCP relay that can be cut and restored, like a broker going away and back.

    Cut, it drops every open connection and closes new ones at once (what a client sees of a
    restarting or unreachable Redis); restored, it relays again.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def url_for(self, url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._links.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._links.discard(sock)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            links = list(self._links)
        for sock in links:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


class Stack:
    """The processes of one segweb installation, and a client's view of it."""

    def __init__(self, root: Path, *, database: TemporaryDatabase, s3_env: dict, **env) -> None:
        self.root = root
        self.database = database
        self.key_prefix = f"segweb-test-{uuid.uuid4().hex[:10]}:"
        self.proxy = TcpProxy(REDIS_URL)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "AWS_"))},
            "SEGWEB_DATA_DIR": str(root),
            "DJANGO_SECRET_KEY": "scale-test-key",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": database.url,
            "CELERY_BROKER_URL": self.proxy.url_for(REDIS_URL),
            "SEGWEB_REDIS_KEY_PREFIX": self.key_prefix,
            "SEGWEB_JOB_CREATE_RATE": "10000/min",
            "SEGWEB_TORCH_THREADS": "1",
            "SEGWEB_OPENVINO_THREADS": "1",
            "SEGWEB_METRICS_TOKEN": METRICS_TOKEN,
            "SEGWEB_WEBHOOK_ALLOW_LOOPBACK": "1",  # the tests' webhook receiver is on 127.0.0.1
            **FAST_RECOVERY,
            **s3_env,
            **env,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self._log_start: dict[str, int] = {}

    # --- processes --------------------------------------------------------------------------

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def prepare(self) -> None:
        self.manage("migrate", "--no-input")
        self.manage("shell", "-c", "from django.contrib.auth.models import User; "
                    f"User.objects.create_user('alice', password={PASSWORD!r})")  # fmt: skip

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        self._log_start[name] = log.tell()  # a restarted process appends to its log
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches its children
        )  # fmt: skip
        log.close()
        self.processes[name] = process
        return process

    def start_web(self, workers: int = 2) -> None:
        self._spawn("web", [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                            "segweb.wsgi"])  # fmt: skip
        self.wait_until(lambda: self._answers("/healthz"), 60, "the web server to answer")

    def start_worker(self, name: str, *, concurrency: int = 1, pool: str = "prefork") -> None:
        """A Celery worker node, as deploy/segweb-worker@.service starts it."""
        command = [str(BIN / "celery"), "-A", "segweb", "worker", "--pool", pool,
                   "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
                   "--loglevel", "INFO", "--without-mingle", "--without-gossip"]  # fmt: skip
        self._spawn(name, command)

    def wait_for_workers(self, *names: str, timeout: float = 120) -> None:
        def ready() -> bool:
            return all(
                b" ready." in (self.root / f"{n}.log").read_bytes()[self._log_start[n] :]
                for n in names
            )

        self.wait_until(ready, timeout, f"workers {names} to be ready")

    def start_beat(self) -> None:
        self._spawn("beat", [str(BIN / "celery"), "-A", "segweb", "beat", "--loglevel", "INFO",
                             "--schedule", str(self.root / "celerybeat-schedule")])  # fmt: skip

    def node_of(self, pid: int) -> str:
        """Which process started here ``pid`` belongs to (each runs in its own group)."""
        group = os.getpgid(pid)
        return next(name for name, p in self.processes.items() if p.pid == group)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and every process it started (its whole group)."""
        process = self.processes.pop(name)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        self.proxy.close()
        with suppress(Exception):  # Redis gone: nothing to tidy there
            self.delete_queued_messages()

    def log(self, name: str, chars: int = 4000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- a client's view --------------------------------------------------------------------

    def _answers(self, path: str) -> bool:
        try:
            return requests.get(self.base + path, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    @staticmethod
    def wait_until(condition, timeout: float, what: str, interval: float = 0.25):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def api(self) -> requests.Session:
        """A session signed in to the API with alice's token."""
        session = requests.Session()
        response = session.post(
            f"{self.base}/api/auth/token/",
            data={"username": "alice", "password": PASSWORD},
            timeout=30,
        )
        response.raise_for_status()
        session.headers["Authorization"] = f"Token {response.json()['token']}"
        return session

    def submit(self, session: requests.Session, photo: Path, **fields) -> requests.Response:
        with photo.open("rb") as f:
            return session.post(
                f"{self.base}/api/jobs/",
                files={"image": (photo.name, f)},
                data={"model": "yolov7_seg", **fields},
                timeout=120,
            )

    def wait_for_job(self, session: requests.Session, job_id: str, timeout: float = 180) -> dict:
        def finished():
            job = session.get(f"{self.base}/api/jobs/{job_id}/", timeout=30).json()
            return job if job["status"] in ("succeeded", "failed") else None

        return self.wait_until(finished, timeout, f"job {job_id} to finish", interval=0.5)

    def job_row(self, job_id: str) -> dict:
        columns = ("status", "worker", "attempts", "error", "enqueued_at", "heartbeat_at")
        sql = f"SELECT {', '.join(columns)} FROM segmentation_job WHERE id = %s"  # noqa: S608
        rows = self.database.query(sql, job_id)
        return dict(zip(columns, rows[0], strict=True)) if rows else {}

    def delete_queued_messages(self) -> int:
        """Drop every message waiting in the broker, as a Redis restarted without persistence."""
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        keys = list(client.scan_iter(f"{self.key_prefix}*"))
        return client.delete(*keys) if keys else 0

    def job_count(self) -> int:
        return self.database.query("SELECT count(*) FROM segmentation_job")[0][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
