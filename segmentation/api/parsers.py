"""The API's body parsers (``DEFAULT_PARSER_CLASSES``): every body a route reads is bounded.

DRF's own JSON and form parsers read the whole body into memory whatever its size, and Python's
JSON decoder recurses once per nesting level: a 5,000-deep body was a RecursionError (a 500).
"""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from ..uploads import describe_bytes
from .exceptions import PayloadTooLarge


def declared_length(request) -> int:
    """The request's Content-Length, 0 when absent or not a number (the server checks it)."""
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0


def _read_at_most(stream, limit: int, request) -> bytes:
    if request is not None and declared_length(request) > limit:
        raise PayloadTooLarge(f"The request body is larger than {describe_bytes(limit)}.")
    raw = stream.read(limit + 1) if stream is not None else b""
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than {describe_bytes(limit)}.")
    return raw


class BoundedJSONParser(JSONParser):
    """JSON bodies up to ``MAX_BYTES``, nested at most ``MAX_DEPTH`` levels (400/413 else)."""

    MAX_BYTES = 1024 * 1024
    MAX_DEPTH = 8

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        raw = _read_at_most(stream, self.MAX_BYTES, request)
        if _nesting(raw) > self.MAX_DEPTH:
            raise ParseError(f"JSON nested deeper than {self.MAX_DEPTH} levels.")
        try:
            return json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"Malformed JSON: {str(exc)[:200]}") from exc


class BoundedFormParser(FormParser):
    """URL-encoded forms up to Django's own limit for form fields (DATA_UPLOAD_MAX_MEMORY_SIZE)."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or BoundedJSONParser.MAX_BYTES
        raw = _read_at_most(stream, limit, request)
        return super().parse(_Bytes(raw), media_type, parser_context)


class BoundedMultiPartParser(MultiPartParser):
    """Multipart bodies no larger than the largest upload a route takes (an archive). Django's
    parser already bounds the fields (DATA_UPLOAD_MAX_MEMORY_SIZE) and how many there are, and
    spools files to disk; this stops a huge body before any of it is read."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.SEGWEB["ARCHIVE_MAX_BYTES"] + 1024 * 1024  # room for the form fields
        if request is not None and declared_length(request) > limit:
            raise PayloadTooLarge(f"The request is larger than {describe_bytes(limit)}.")
        return super().parse(stream, media_type, parser_context)


class _Bytes:
    """The already-read body, for FormParser (which only calls ``read()``)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def read(self) -> bytes:
        return self.raw


def _nesting(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
