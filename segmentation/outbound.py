"""Outbound HTTP for webhooks: signed POSTs that cannot be pointed at the server's own network.

A webhook URL is chosen by a user, so every request it causes is a server-side request forgery
risk: ``http://169.254.169.254/`` is a cloud's metadata service (credentials), ``127.0.0.1`` and
private addresses are the installation's own Redis, PostgreSQL and admin ports. Two checks:

- before sending, the URL must be http(s), carry no credentials, and its host must resolve only to
  public addresses (clear messages, also used when a webhook is created);
- when the socket connects, the address it actually reached is checked again. Resolving twice
  (once to check, once to connect) would let a DNS name that changes its answer between the two
  (DNS rebinding) through; checking the connected peer cannot be raced.

Redirects are never followed (a 3xx counts as a failed attempt), environment proxies are ignored,
and nothing of the answer but its status line is read. Plain Python and requests: no Django here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

# Receivers answer a webhook at once and do their work later; one that takes longer is treated
# as down and tried again later. 3 s to connect, 5 s for the answer to start, 10 s in all.
TIMEOUT = Timeout(connect=3.0, read=5.0, total=10.0)
USER_AGENT = "segweb-webhooks/1"


class DestinationRefused(Exception):
    """The URL may not be requested: bad scheme, credentials, or a non-public address."""


def address_refusal(address: str, *, allow_loopback: bool) -> str | None:
    """Why this IP address may not be contacted, or None when it is a public one.

    Loopback is allowed only with ``allow_loopback`` (tests, one-machine set-ups); private,
    link-local (cloud metadata), multicast, reserved and unspecified addresses never are.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    for kind in ("link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:  # shared (CGNAT), documentation, benchmarking... ranges
        return f"{ip} is not a public address"
    return None


def check_url(url: str, *, allow_loopback: bool) -> None:
    """Refuse (``DestinationRefused``, saying why) a URL a webhook may not be sent to.

    Resolves the host: every address it resolves to must be acceptable.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise DestinationRefused("The URL is malformed.") from exc
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused("Only http:// and https:// URLs are allowed.")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("The URL may not contain a user name or password.")
    if not parts.hostname:
        raise DestinationRefused("The URL has no host name.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefused("The URL's port is not a number from 0 to 65535.") from exc
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused(f"The host {parts.hostname} cannot be resolved.") from exc
    for info in infos:
        reason = address_refusal(str(info[4][0]), allow_loopback=allow_loopback)
        if reason:
            raise DestinationRefused(
                f"The host {parts.hostname} resolves to a non-public address ({reason})."
            )


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str


def post(url: str, body: bytes, headers: dict[str, str], *, allow_loopback: bool) -> Answer:
    """POST ``body`` to ``url`` with the guards above; the receiver's status, never its body.

    Raises ``DestinationRefused`` or a ``requests.RequestException`` (no answer).
    """
    check_url(url, allow_loopback=allow_loopback)
    with requests.Session() as session:
        session.trust_env = False  # no proxies from the environment: we check who we talk to
        adapter = _GuardedAdapter(allow_loopback=allow_loopback)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            response = session.post(
                url,
                data=body,
                headers={"User-Agent": USER_AGENT, **headers},
                timeout=TIMEOUT,
                allow_redirects=False,
                stream=True,  # the answer's body is never read
            )
        except requests.ConnectionError as exc:
            refused = _refusal_in(exc)
            if refused:
                raise refused from exc
            raise
        response.close()
        return Answer(response.status_code, response.reason or "")


def _refusal_in(exc: BaseException) -> DestinationRefused | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DestinationRefused):
            return exc
        for arg in getattr(exc, "args", ()):
            if isinstance(arg, BaseException):
                found = _refusal_in(arg)
                if found:
                    return found
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
    return None


class _PeerCheck:
    allow_loopback = False

    def _new_conn(self):
        sock = super()._new_conn()
        try:
            peer = sock.getpeername()[0]
        except OSError:
            sock.close()
            raise
        reason = address_refusal(peer, allow_loopback=self.allow_loopback)
        if reason:
            sock.close()
            raise DestinationRefused(f"Connected to a non-public address ({reason}).")
        return sock


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, *, allow_loopback: bool) -> None:
        self.allow_loopback = allow_loopback
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        allow = self.allow_loopback

        class Http(_PeerCheck, HTTPConnection):
            allow_loopback = allow

        class Https(_PeerCheck, HTTPSConnection):
            allow_loopback = allow

        class HttpPool(HTTPConnectionPool):
            ConnectionCls = Http

        class HttpsPool(HTTPSConnectionPool):
            ConnectionCls = Https

        self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}
