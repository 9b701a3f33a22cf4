"""How many images the web process decodes at once.

Decoding is the one thing a request does whose memory depends on the file's content rather than
its size (a 265 KB TIFF holds 160 MB of float pixels). Every decode in the web process (upload
validation, an overlay re-drawn after a threshold change) takes one of
``SEGWEB_DECODE_SLOTS`` slots; a request that cannot get one within
``SEGWEB_DECODE_WAIT_SECONDS`` is answered 503 with Retry-After instead of queueing up memory.
Workers decode one job at a time each and do not use the slots.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings


class DecodeBusy(Exception):
    """Every decoding slot stayed busy for the whole wait: answer 503, retry after ``wait``."""

    def __init__(self, wait: float) -> None:
        super().__init__("The server is busy decoding other photos; try again in a few seconds.")
        self.wait = wait


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one decoding slot for the ``with`` block; ``DecodeBusy`` if none frees in time."""
    slots = _slots(settings.SEGWEB["DECODE_SLOTS"])
    wait = settings.SEGWEB["DECODE_WAIT_SECONDS"]
    if not slots.acquire(timeout=wait):
        raise DecodeBusy(wait=max(1.0, wait))
    try:
        yield
    finally:
        slots.release()


@functools.cache
def _slots(count: int) -> threading.BoundedSemaphore:
    # One semaphore per configured size: settings are read where used, and a test that changes
    # the setting gets its own.
    return threading.BoundedSemaphore(max(1, count))
