"""OpenAPI helpers: every endpoint documents its errors in the one error shape."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "hint": serializers.CharField(),
            },
        )
    },
)

_DESCRIPTIONS = {
    400: "invalid_request / invalid_manifest / invalid_chunk_size: the request is not valid.",
    401: "not_authenticated / authentication_failed / invalid_credentials: sign in again.",
    404: "not_found: unknown id, or an upload that belongs to someone else.",
    409: "a conflict with the current state (see the error code).",
    413: "upload_too_large: the upload exceeds the configured maximum.",
    422: "the chunk failed a check (checksum_mismatch, chunk_out_of_range, chunk_size_mismatch).",
    503: "a service the server needs is down.",
    507: "insufficient_storage: not enough free disk on the server.",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int, Any]:
    """``{status: OpenApiResponse(Error)}`` for the given statuses, with optional descriptions."""
    out: dict[int, Any] = {}
    for code in codes:
        text = descriptions.get(f"s{code}", _DESCRIPTIONS.get(code, "error"))
        out[code] = OpenApiResponse(ErrorSerializer, description=text)
    return out
