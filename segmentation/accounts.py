"""Who is signing in: the client's real address, usernames compared without case, and what
happens to API tokens when a password changes.

Every throttle (django-axes for the sign-ins, DRF's for the API and sign-up) keys on
``client_ip``; every sign-in (page, admin, API token) goes through ``CasefoldUsernameBackend``.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from math import ceil

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from . import services


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, as far as ``SEGWEB_TRUSTED_PROXIES`` lets us know it.

    With no trusted proxy the TCP peer (``REMOTE_ADDR``) is the client, whatever
    ``X-Forwarded-For`` says: anyone can send that header. Behind N proxies, each appends the
    address it received the request from, so the client is the N-th entry from the right; the
    entries left of it were written by the client and are ignored. This is DRF's ``NUM_PROXIES``
    rule (settings.py sets both from the same value), plus one check: an entry that is not an
    address (a proxy count set too high) falls back to the peer, and a peer that is none (a
    Unix socket) is None, rather than arbitrary text in django-axes' address column (an error
    on PostgreSQL's ``inet``).
    """
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    proxies = settings.TRUSTED_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return peer
    hops = [hop.strip() for hop in forwarded.split(",")]
    return _address(hops[-min(proxies, len(hops))]) or peer


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# --- Usernames --------------------------------------------------------------------------------


def username_key(username: str | None) -> str:
    """What two usernames must not share: ``Émile``, ``émile`` and ``ÉMILE`` are one name.

    ``casefold`` (not ``lower``: ``Straße`` and ``STRASSE`` fold together), between NFKC
    normalisations as Unicode's NFKC_Casefold does (Django already stores usernames NFKC).
    """
    folded = unicodedata.normalize("NFKC", username or "").casefold()
    return unicodedata.normalize("NFKC", folded)


def username_taken(username: str) -> bool:
    """Whether a user already has this name, compared by ``username_key``.

    Compared here, not in SQL: neither database folds case the way Python does (SQLite's
    LOWER and LIKE only fold ASCII), and Django's ``username__iexact`` is what let ``Émile``
    and ``émile`` both sign up. The user table is Django's own, so it cannot hold a folded
    column with a unique constraint either: the forms that create users check here.
    """
    return stored_username(username) is not None


def stored_username(username: str | None) -> str | None:
    """The username as stored that this one means: the exact name if it exists, else the one
    name equal to it by ``username_key``; None if there is none (or, for names created before
    this check, more than one).

    A name typed as stored costs one indexed query; any other spelling (or an unknown name)
    one pass over the usernames, which sign-in throttles and lockouts keep rare.
    """
    users = get_user_model()._default_manager
    field = get_user_model().USERNAME_FIELD
    if not username:
        return None
    if users.filter(**{field: username}).exists():
        return username
    key = username_key(username)
    matches = [
        name for name in users.values_list(field, flat=True).iterator() if username_key(name) == key
    ]
    return matches[0] if len(matches) == 1 else None


class CasefoldUsernameBackend(ModelBackend):
    """Django's model backend, with ``émile`` signing in as ``Émile``: the sign-in page, the
    admin and the API token all authenticate through it."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        # An unknown name still goes on to ModelBackend, which hashes the given password anyway.
        name = stored_username(username) or username
        return super().authenticate(request, username=name, password=password)


def lockout_username(request: HttpRequest, credentials: dict | None) -> str:
    """The account that django-axes counts failures against (AXES_USERNAME_CALLABLE): every
    spelling of a name counts against the same account."""
    field = settings.AXES_USERNAME_FORM_FIELD
    given = (credentials or {}).get(field) or request.POST.get(field, "")
    return username_key(given)[:150]  # AccessAttempt.username is 255 chars; names are 150


# --- Lockout ----------------------------------------------------------------------------------


def lockout_message() -> str:
    minutes = max(1, ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    return (
        "Too many failed sign-ins for this account or from your address. "
        f"Try again in {minutes} minutes."
    )


def lockout_response(request: HttpRequest, original_response=None, credentials=None):
    """django-axes' answer once an account or an address is locked out (AXES_LOCKOUT_CALLABLE):
    the API's JSON error shape under /api/, the sign-in page with the message elsewhere (the
    admin's sign-in included). Both say when to try again."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": lockout_message()}, status=429)
    else:
        response = render(
            request, "registration/locked_out.html", {"message": lockout_message()}, status=429
        )
    response["Retry-After"] = str(seconds)
    return response


# --- Tokens follow the password ---------------------------------------------------------------


def revoke_tokens_on_password_change(sender, instance, update_fields=None, **kwargs) -> None:
    """pre_save of the user model: a new password hash, or deactivation, revokes every API
    token of the user (a deactivated user's tokens would otherwise work again on reactivation).

    A signal, exceptionally (see STYLE.md), because a password changes through many doors that
    segweb does not own: the admin's form, ``set_password()`` + ``save()`` in a shell,
    ``manage.py changepassword``, Django's password views. All of them save the user; only a
    model-level hook sees every one. Comparing the stored hash (rather than relying on
    ``set_password`` having been called) also catches a hash assigned directly. It errs on the
    safe side once per hasher change: when Django re-hashes a password with stronger
    parameters (after an upgrade, at the user's next sign-in with it), the tokens go too.
    Saves that name their fields without the password (``last_login``) cost nothing.
    """
    watched = {"password", "is_active"}
    if instance.pk is None or (update_fields is not None and not watched & set(update_fields)):
        return
    before = sender._default_manager.filter(pk=instance.pk).values("password", "is_active")
    stored = before.first()
    if stored is None:
        return
    if stored["password"] != instance.password or (stored["is_active"] and not instance.is_active):
        services.user_tokens_revoke(user=instance)
