"""Is segweb able to work: backing services reachable, and a model that really runs.

Read by the web process, which never imports torch: whether a model *runs* is what the workers
that loaded it reported (``ModelReport``); the engine's own listing only knows whether its files
are present. Together they decide what the API's model list, the upload form and ``/readyz`` say.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.core.files.storage import default_storage
from django.db import DatabaseError, connection

from .inference import AUTO, ModelUnavailableError, list_models, resolve_model_name
from .inference.registry import MASKRCNN, YOLOV7
from .models import ModelReport

READY_TIMEOUT = 5.0  # seconds /readyz waits for storage and broker before calling them down

#: Models ``auto`` may pick, best first (the engine's choice comes first when it runs).
AUTO_FALLBACKS = (MASKRCNN, YOLOV7)

#: An absolute path: a slash (or a drive letter) not inside a word, then its parts.
_PATH = re.compile(r"(?<![\w.~:/])(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\":,;()]+)+[\\/]?")


def public_reason(text: str) -> str:
    """``text`` with every file-system path cut to its last part: users never see server paths."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    description: str
    usable: bool
    reason: str  # why not, for people; empty when usable
    default: bool  # what ``auto`` picks now


def broken_models() -> dict[str, str]:
    """Models a worker reported it could not load, with the reason it gave."""
    try:
        return dict(ModelReport.objects.filter(usable=False).values_list("model", "reason"))
    except DatabaseError:  # no table yet (before migrate) or the database is down
        return {}


def model_statuses() -> list[ModelStatus]:
    """Every model segweb knows: usable when its files are here and no worker failed to load it."""
    broken = broken_models()
    infos = list_models()
    usable = {i.name: i.usable and i.name not in broken for i in infos}
    try:
        preferred = resolve_model_name(AUTO)
    except ModelUnavailableError:
        preferred = None
    default = next((n for n in (preferred, *AUTO_FALLBACKS) if n and usable[n]), None)
    statuses = []
    for info in infos:
        reason = "" if usable[info.name] else (info.reason or broken.get(info.name, ""))
        statuses.append(
            ModelStatus(
                name=info.name,
                description=info.description,
                usable=usable[info.name],
                reason=public_reason(reason),
                default=info.name == default,
            )
        )
    return statuses


def resolve_model(name: str | None) -> str:
    """The model a new job runs: ``name``, or what ``auto`` picks; refused when it cannot run.

    Raises:
        ModelUnavailableError: unknown name, or a model that cannot run here (with the reason).
    """
    statuses = model_statuses()
    if name in (None, "", AUTO):
        default = next((s for s in statuses if s.default), None)
        if default is None:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in statuses)
            raise ModelUnavailableError(f"No model can run on this server ({reasons}).")
        return default.name
    status = next((s for s in statuses if s.name == name), None)
    if status is None:
        names = ", ".join(s.name for s in statuses)
        raise ModelUnavailableError(f"Unknown model {name!r}; choose one of: {AUTO}, {names}.")
    if not status.usable:
        raise ModelUnavailableError(f"Model {name} cannot run here: {status.reason}.")
    return name


# --- Readiness ------------------------------------------------------------------------------


def readiness() -> dict[str, str | None]:
    """Check database, storage, broker and models; map each to None (fine) or what is wrong.

    Storage and broker are probed side by side in daemon threads, and one that has not answered
    within ``READY_TIMEOUT`` seconds is reported down: a store or broker that hangs (rather than
    refusing connections) must not hang the probe, which load balancers time out on. An
    abandoned thread ends with its client's own timeout (see the S3 and Redis settings).
    """
    results: dict[str, str | None] = {}

    def probe(name: str, check: Callable[[], object]) -> None:
        results[name] = _check(check)

    threads = [
        threading.Thread(target=probe, args=args, daemon=True, name=f"readyz-{args[0]}")
        for args in (("storage", _check_storage), ("broker", _check_broker))
    ]
    for thread in threads:
        thread.start()
    checks = {"database": _check(_check_database)}  # this thread's connection, like a request's
    checks["models"] = _check_models() if checks["database"] is None else "unknown (no database)"
    deadline = time.monotonic() + READY_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for name in ("storage", "broker"):
        checks[name] = results.get(name, f"no answer in {READY_TIMEOUT:g} s")
    return checks


def _check(probe: Callable[[], object]) -> str | None:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return f"unavailable ({type(exc).__name__}: {public_reason(str(exc))[:200]})"
    return None


def _check_models() -> str | None:
    statuses = model_statuses()
    if any(s.usable for s in statuses):
        return None
    return "no model can run: " + "; ".join(f"{s.name}: {s.reason}" for s in statuses)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_storage() -> None:
    bucket = getattr(default_storage, "bucket_name", None)
    if bucket:
        # S3: HEAD on the bucket, so that a missing bucket or wrong credentials show here (a
        # HEAD on a missing key answers 404 in both cases, which looks like "fine").
        default_storage.connection.meta.client.head_bucket(Bucket=bucket)
    else:
        default_storage.exists("readyz-probe")


def _check_broker() -> None:
    from segweb.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
