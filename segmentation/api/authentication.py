"""API tokens: django-rest-knox's, sent as ``Authorization: Token <key>`` like DRF's were.

knox stores a SHA-512 digest of each token (never the token), one row per client that signed
in, each with an optional expiry (``SEGWEB_TOKEN_TTL_DAYS``).
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's authentication, with a header that is not UTF-8 refused as a 401 (knox decodes
    it unguarded: a 500)."""

    def authenticate_credentials(self, token: bytes):
        try:
            token.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Invalid token.") from exc
        return super().authenticate_credentials(token)


class TokenScheme(OpenApiAuthenticationExtension):
    """The schema names it as before (``tokenAuth``): clients generated from it keep working."""

    target_class = TokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix=self.target.authenticate_header(None)
        )
