"""`make run` (``manage.py serve``) supervises what it starts: segweb runs whole or not at all.

Real processes and real SIGKILLs: a dead worker or web server stops the whole group, a killed
supervisor takes its parts with it, nothing is left holding the port, and two instances side by
side do not disturb each other.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.live import processes_of, started_segweb

pytestmark = pytest.mark.slow


def children_of(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


def part(segweb, name: str) -> int:
    return next(pid for pid, cmd in children_of(segweb.process.pid) if name in cmd)


def wait_until_gone(data_dir: Path, timeout: float = 60) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    left = processes_of(data_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_of(data_dir)
    return left


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_worker_pool(segweb, data_dir: Path, timeout: float = 90) -> None:
    """Until the worker has forked its pool and embedded beat (what a dead worker leaves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([p for p, cmd in processes_of(data_dir) if "celery" in cmd]) >= 3:
            return
        time.sleep(0.5)
    raise AssertionError(f"worker pool not up: {processes_of(data_dir)}")


@pytest.mark.parametrize("victim", ["celery", "gunicorn"])
def test_a_killed_part_stops_the_whole_group_and_frees_the_port(tmp_path, victim):
    with started_segweb(tmp_path) as segweb:
        wait_for_worker_pool(segweb, tmp_path)
        os.kill(part(segweb, victim), signal.SIGKILL)

        assert segweb.process.wait(timeout=60) == 1
        assert wait_until_gone(tmp_path) == []
        assert port_is_free(segweb.port)
        log = segweb.log.read_text()
        name = "worker" if victim == "celery" else "web"
        assert f"segweb's {name} was killed by signal 9; stopping everything." in log


def test_a_killed_supervisor_takes_its_parts_with_it(tmp_path):
    with started_segweb(tmp_path) as segweb:
        wait_for_worker_pool(segweb, tmp_path)
        segweb.process.kill()
        segweb.process.wait(timeout=10)

        assert wait_until_gone(tmp_path) == []
        assert port_is_free(segweb.port)


def test_two_instances_side_by_side_share_nothing(tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with started_segweb(first_dir) as first, started_segweb(second_dir) as second:
        for segweb in (first, second):
            ready = requests.get(f"{segweb.base}/readyz", timeout=30)
            assert ready.status_code == 200, ready.text
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=60) == 0
        assert wait_until_gone(first_dir) == []

        assert requests.get(f"{second.base}/readyz", timeout=30).status_code == 200
        assert processes_of(second_dir) != []
