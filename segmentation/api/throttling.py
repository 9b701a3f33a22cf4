"""Rate limits keyed on the user, or on the client's real address (``accounts.client_ip``);
they fail open: a cache outage must not turn uploads into 500s."""

from __future__ import annotations

import logging
from types import SimpleNamespace

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
