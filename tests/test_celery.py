"""The Celery worker set-up in segweb/celery.py."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from celery.concurrency import get_implementation

from segweb.celery import share_the_cores_between_pool_processes

THREAD_VARIABLES = ("SEGWEB_TORCH_THREADS", "SEGWEB_OPENVINO_THREADS")


@pytest.fixture
def unset_threads(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so what the handler sets is undone afterwards
        monkeypatch.delenv(name)


def start_worker(pool: str, concurrency: int) -> dict[str, str | None]:
    """What ``worker_init`` gets from ``celery worker --pool P --concurrency N``."""
    sender = SimpleNamespace(pool_cls=get_implementation(pool), concurrency=concurrency)
    share_the_cores_between_pool_processes(sender=sender)
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def test_prefork_processes_divide_the_cores_between_them(unset_threads):
    per_process = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert start_worker("prefork", 2) == dict.fromkeys(THREAD_VARIABLES, per_process)


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 1), ("threads", 2)])
def test_one_process_keeps_every_core(unset_threads, pool, concurrency):
    assert start_worker(pool, concurrency) == dict.fromkeys(THREAD_VARIABLES)


def test_a_thread_count_set_in_the_environment_wins(unset_threads, monkeypatch):
    monkeypatch.setenv("SEGWEB_TORCH_THREADS", "3")
    assert start_worker("prefork", 2)["SEGWEB_TORCH_THREADS"] == "3"
