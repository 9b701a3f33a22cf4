"""Rate limits keyed on the user, or on the client's real address (``accounts.client_ip``);
they fail open: a cache outage must not turn uploads into 500s."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.throttling import ScopedRateThrottle

from ..accounts import client_ip

logger = logging.getLogger(__name__)


class ScopedThrottle(ScopedRateThrottle):
    """DRF's scoped throttle; if the shared cache (Redis, files) cannot be reached, the request
    goes through unthrottled and the outage is logged, rather than refusing every request."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.warning("throttle: cache unavailable, request not rate-limited", exc_info=True)
            return True

    def get_ident(self, request) -> str:
        # Anonymous requests are counted per client address: the same one django-axes uses.
        return client_ip(request) or "unknown"


def rate_wait(request, scope: str) -> float | None:
    """For pages (not DRF views): count this request against ``scope``'s rate, and say how
    many seconds to wait if it is over (None: go ahead)."""
    throttle = ScopedThrottle()
    if throttle.allow_request(request, SimpleNamespace(throttle_scope=scope)):
        return None
    return throttle.wait() or 1.0


class JobCreateThrottle(ScopedThrottle):
    """The job rate (``SEGWEB_JOB_CREATE_RATE``), counted per photo: one bucket per user that
    ``POST /api/jobs/``, ``POST /api/collections/``, retries and the upload form all draw from.

    ``take`` draws several at once, all or nothing: a form with 5 photos and 3 left in the
    bucket creates nothing.
    """

    scope = "job_create"

    def allow_request(self, request, view) -> bool:
        if not request.user.is_authenticated:
            return True  # authentication answers 401 first
        self.wait_seconds = job_rate_take(user=request.user, count=1)
        return self.wait_seconds is None

    def wait(self) -> float | None:
        return self.wait_seconds


def job_rate_take(*, user: AbstractBaseUser, count: int) -> float | None:
    """Draw ``count`` jobs from ``user``'s job rate; None if they fit, else the seconds to wait
    (and nothing is drawn). Shares DRF's cache key and history format for the scope."""
    throttle = ScopedRateThrottle()
    throttle.scope = JobCreateThrottle.scope
    rate = throttle.get_rate()
    if rate is None:
        return None
    most, duration = throttle.parse_rate(rate)
    try:
        key = throttle.cache_format % {"scope": throttle.scope, "ident": user.pk}
        now = throttle.timer()
        history = [t for t in throttle.cache.get(key, []) if t > now - duration]
        if len(history) + count > most:
            return _wait(history, count, most, duration, now)
        throttle.cache.set(key, [now] * count + history, duration)
    except Exception:
        logger.warning("throttle: cache unavailable, jobs not rate-limited", exc_info=True)
    return None


def _wait(history: list[float], count: int, most: int, duration: int, now: float) -> float:
    """Seconds until ``count`` more fit: until the entries that must make room have expired."""
    if count > most:
        return float(duration)  # never fits in one go
    expiring = history[most - count]  # history is newest first
    return max(1.0, expiring + duration - now)
