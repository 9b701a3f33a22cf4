"""Per-user rate limits that fail open: a cache outage must not turn uploads into 500s."""

from __future__ import annotations

import logging

from rest_framework.throttling import ScopedRateThrottle

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
