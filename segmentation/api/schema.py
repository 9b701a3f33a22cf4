"""Schema post-processing: answers every operation of a kind can give, said once."""

from __future__ import annotations

UNSUPPORTED_MEDIA_TYPE = {
    "description": "The body's Content-Type is not one this operation reads, or it is unreadable "
    "(e.g. a multipart body without a valid part).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def document_unsupported_media_type(result, generator, request, public):
    """DRF answers 415 to any request body it cannot parse; every operation with a body says so."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault("415", UNSUPPORTED_MEDIA_TYPE)
    return result
