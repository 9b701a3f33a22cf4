"""A worker builds a missing OpenVINO export by itself, in the background.

``load_segmenter(..., build_export=True)`` (what the worker does) calls ``request_export`` when
the export it wants is missing or stale, and keeps running torch meanwhile. The export runs as
``python -m segmentation.inference.export --background`` in a child process:

- at the lowest CPU priority (``SCHED_IDLE``: it only gets cores that nothing else wants, so
  jobs do not slow down), and it dies with the worker (``PR_SET_PDEATHSIG``);
- one at a time across every process and machine that shares the weights directory: it takes
  the directory's export lock without waiting (``fcntl.flock``; on NFS, Linux turns it into a
  POSIX lock that the server arbitrates) and leaves at once when someone else holds it; this
  process asks again a minute later if the export is still missing;
- checked against torch on the shipped photos, exactly as ``make export`` does, and installed
  the same way: files under temporary names, renamed into place, the manifest last. Nobody ever
  sees half an export, and every process switches on its next job (``registry`` notices the new
  manifest with one ``stat`` per job);
- a failure (the export disagrees with torch, or crashes) is written down with the fingerprint
  it was tried for (``.<model>.openvino.failed.json``): no worker tries that again until
  something in the fingerprint changes (new weights, upgraded packages) or ``make export``
  succeeds. Jobs keep running on torch; a log line says why.

Nothing here imports torch or openvino.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .catalog import fingerprint, model_spec, source_weights
from .runtime import auto_export_enabled

logger = logging.getLogger("segmentation.inference")

#: Exit status of an export that found another one running (BSD's EX_TEMPFAIL).
BUSY = 75
#: Seconds before asking again, after another process held the lock or an export ended.
RETRY_SECONDS = 60.0

_ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_running: set[tuple[str, str, str]] = set()
_next_try: dict[tuple[str, str, str], float] = {}


def failure_path(name: str, weights_dir: Path, precision: str) -> Path:
    """Where a failed export of ``name`` at ``precision`` is written down."""
    from .catalog import export_stem

    return weights_dir / f".{export_stem(name, precision)}.failed.json"


def record_failure(name: str, weights_dir: Path, precision: str, reason: str) -> None:
    """Write down that an export failed, for the fingerprint of today (workers do not retry)."""
    spec = model_spec(name)
    source = source_weights(spec, weights_dir)
    data = {
        "reason": reason,
        "fingerprint": fingerprint(spec, source, precision) if source and source.is_file() else {},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = failure_path(name, weights_dir, precision)
    pending = path.with_name(path.name + ".partial")
    pending.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(pending, path)


def forget_failure(name: str, weights_dir: Path, precision: str) -> None:
    failure_path(name, weights_dir, precision).unlink(missing_ok=True)


def failed_before(name: str, weights_dir: Path, precision: str) -> str | None:
    """Why the export failed last time, if it was tried with today's fingerprint; else None."""
    try:
        data = json.loads(failure_path(name, weights_dir, precision).read_text())
    except (OSError, ValueError):
        return None
    spec = model_spec(name)
    source = source_weights(spec, weights_dir)
    if source is None or not source.is_file():
        return None
    if data.get("fingerprint") != fingerprint(spec, source, precision):
        return None  # something changed since: worth another try
    return str(data.get("reason", "unknown reason"))


def request_export(name: str, weights_dir: Path, precision: str) -> bool:
    """Start building ``name``'s export in the background unless one is already under way here,
    was tried less than a minute ago, or is switched off (``SEGWEB_AUTO_EXPORT=0``).

    Returns whether a build was started. Never raises: the caller is running a job.
    """
    if not auto_export_enabled():
        return False
    key = (name, str(weights_dir.resolve()), precision)
    with _lock:
        if key in _running or time.monotonic() < _next_try.get(key, 0.0):
            return False
        _running.add(key)
    thread = threading.Thread(
        target=_build, args=(key, weights_dir), name=f"export-{name}-{precision}", daemon=True
    )
    thread.start()
    return True


def _build(key: tuple[str, str, str], weights_dir: Path) -> None:
    name, _, precision = key
    retry_after = RETRY_SECONDS
    try:
        reason = failed_before(name, weights_dir, precision)
        if reason is not None:
            logger.warning(
                "%s: not building its %s OpenVINO export again: it failed with these weights and "
                "packages (%s). Jobs run on torch; run `make export` to try again.",
                name, precision.upper(), reason,
            )  # fmt: skip
            retry_after = float("inf")
            return
        if not os.access(weights_dir, os.W_OK):
            logger.warning(
                "%s: cannot build its OpenVINO export: %s is not writable. Jobs run on torch; "
                "run `make export` where it is, or set SEGWEB_AUTO_EXPORT=0 to silence this.",
                name, weights_dir,
            )  # fmt: skip
            retry_after = float("inf")
            return
        retry_after = _run_export(name, weights_dir, precision)
    except Exception:  # a side thread of a worker: log, never take the worker down
        logger.exception("%s: the background export could not be started", name)
        retry_after = 3600.0
    finally:
        with _lock:
            _running.discard(key)
            _next_try[key] = time.monotonic() + retry_after


def _run_export(name: str, weights_dir: Path, precision: str) -> float:
    """Run the export child process and wait for it; returns seconds before asking again."""
    cpus = str(len(os.sched_getaffinity(0)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(_ROOT), os.environ.get("PYTHONPATH")))),
        # Every core, since it only gets the ones nothing else wants.
        "SEGWEB_TORCH_THREADS": cpus,
        "SEGWEB_OPENVINO_THREADS": cpus,
    }
    command = [
        sys.executable, "-m", "segmentation.inference.export", "--background",
        "--model", name, "--precision", precision, "--weights-dir", str(weights_dir),
    ]  # fmt: skip
    started = time.monotonic()
    logger.info("%s: building its %s OpenVINO export in the background", name, precision.upper())
    child = subprocess.Popen(
        command, env=env, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = child.communicate()
    elapsed = time.monotonic() - started
    if child.returncode == 0:
        logger.info(
            "%s: %s OpenVINO export ready after %.0f s; the next job runs on it",
            name, precision.upper(), elapsed,
        )  # fmt: skip
        return RETRY_SECONDS
    if child.returncode == BUSY:
        logger.info("%s: another process is building an OpenVINO export; waiting for it", name)
        return RETRY_SECONDS
    last = " | ".join(output.strip().splitlines()[-3:])
    logger.warning(
        "%s: the background %s OpenVINO export failed (exit status %s after %.0f s): %s. Jobs "
        "run on torch.",
        name, precision.upper(), child.returncode, elapsed, last,
    )  # fmt: skip
    # A refused export wrote itself down (never retried with the same fingerprint); one killed
    # (out of memory...) did not: try again in an hour.
    return 3600.0
