"""The one error family of RelayPACS and the DRF handler that renders it.

Every error a client can meet is ``{"error": {"code", "message", "hint"}}``: ``code`` is
stable for programs, ``message`` and ``hint`` are sentences for a clinic technician.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApplicationError(Exception):
    """A failure with a stable code, a message and a hint written for the user."""

    def __init__(
        self,
        code: str,
        message: str,
        hint: str = "",
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status_code = status_code
        self.extra = extra or {}
        # Seconds a client should wait before trying again: sent as Retry-After.
        self.retry_after = retry_after

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint, **self.extra}


def error_body(code: str, message: str, hint: str = "", **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


_DRF_MESSAGES: dict[type[exceptions.APIException], tuple[str, str, str]] = {
    exceptions.NotAuthenticated: (
        "not_authenticated",
        "You are not signed in.",
        "Sign in again, then repeat what you were doing.",
    ),
    exceptions.AuthenticationFailed: (
        "authentication_failed",
        "Your sign-in could not be checked or has expired.",
        "Sign in again, then repeat what you were doing.",
    ),
    exceptions.PermissionDenied: (
        "permission_denied",
        "Your account is not allowed to do this.",
        "Ask your RelayPACS administrator for access if you need it.",
    ),
    exceptions.NotFound: (
        "not_found",
        "Nothing was found here.",
        "Check the link or the upload id; it may have been cancelled or removed.",
    ),
    exceptions.MethodNotAllowed: (
        "method_not_allowed",
        "This request method is not supported here.",
        "Check the API documentation at /api/v1/docs/.",
    ),
    exceptions.UnsupportedMediaType: (
        "unsupported_media_type",
        "The request body has a content type this endpoint does not accept.",
        "Send JSON, or application/octet-stream for chunk bodies.",
    ),
    exceptions.ParseError: (
        "malformed_request",
        "The request body could not be read.",
        "Send valid JSON; the API documentation is at /api/v1/docs/.",
    ),
    exceptions.Throttled: (
        "rate_limited",
        "Too many requests in a short time.",
        "Wait a moment and try again.",
    ),
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API error as ``{"error": {...}}`` with the right status."""
    if isinstance(exc, ApplicationError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response({"error": exc.as_dict()}, status=exc.status_code, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(
            "invalid_request",
            "Some of the information sent is missing or not valid.",
            "Correct the fields listed in 'fields' and send again.",
            fields=exc.detail,
        )
        return response
    for kind, (code, message, hint) in _DRF_MESSAGES.items():
        if isinstance(exc, kind):
            response.data = error_body(code, message, hint)
            return response
    response.data = error_body("error", str(exc.detail), "")
    return response
