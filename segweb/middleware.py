"""Project-wide response headers."""

from __future__ import annotations

from django.utils.cache import patch_cache_control, patch_vary_headers


class PrivateCacheMiddleware:
    """Answers to a signed-in user (session or token), and every API answer, are the asker's
    alone: ``Cache-Control: private`` so no shared cache (a proxy, a CDN) keeps one user's page,
    photo or JSON for the next, and ``Vary: Cookie, Authorization`` so a browser's own cache
    keys on who asked.

    A view that set its own Cache-Control (a file's ``private, max-age``, ``never_cache``) keeps
    it: it knows better.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if _is_personal(request):
            if not response.has_header("Cache-Control"):
                patch_cache_control(response, private=True)
            patch_vary_headers(response, ("Cookie", "Authorization"))
        return response


def _is_personal(request) -> bool:
    # DRF sets request.user on the underlying request once a token authenticated it. Every
    # API answer counts, signed in or not: POST /api/auth/token/ answers a token to a client
    # that was anonymous when it asked.
    user = getattr(request, "user", None)
    authenticated = user is not None and user.is_authenticated
    return authenticated or "HTTP_AUTHORIZATION" in request.META or request.path.startswith("/api/")
