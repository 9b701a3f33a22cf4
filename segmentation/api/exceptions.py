"""Every API error has the same shape: ``{"detail": "what was wrong"}``, plus ``"errors"`` with
the per-field messages when there are some. Clients can always show ``detail``."""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


def exception_handler(exc, context):
    # Imported here: rest_framework.views reads DEFAULT_PARSER_CLASSES when it is imported,
    # and the parsers (segmentation.api.parsers) import this module's PayloadTooLarge.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return response  # a detail of the view's own, maybe with more fields (``rejected``)
    response.data = {"detail": _summary(data), "errors": data}
    return response


def _summary(errors) -> str:
    if isinstance(errors, dict):
        return " ".join(
            f"{field}: {_summary(messages)}" if field != "non_field_errors" else _summary(messages)
            for field, messages in errors.items()
        )
    if isinstance(errors, list):
        return " ".join(_summary(message) for message in errors)
    return str(errors)
