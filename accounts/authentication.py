"""JWT authentication that also ends with its session (see accounts.services.sessions)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.settings import api_settings

# Upload tokens (uploads.tokens) share the Bearer scheme; their own class reads them.
UPLOAD_TOKEN_PREFIX = b"upl_"


class SessionJWTAuthentication(JWTAuthentication):
    """An access token is accepted while its session (``sid`` claim) is on and not idle.

    Tokens minted without a session (``RefreshToken.for_user`` in tests and scripts) carry
    no ``sid`` and are accepted until they expire.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = self.get_header(request)
        if header is None:
            return None
        raw_token = self.get_raw_token(header)
        if raw_token is None or raw_token.startswith(UPLOAD_TOKEN_PREFIX):
            return None
        return self.user_for_token(raw_token)

    def user_for_token(self, raw_token: bytes) -> tuple[Any, Any]:
        """The user and validated claims of an access token, as ``authenticate`` accepts
        it; raises AuthenticationFailed (InvalidToken among them) otherwise. The lean chunk
        endpoint (uploads.chunk_endpoint) checks its access tokens with this too."""
        # Imported here: DRF loads this class while relaypacs.errors is still importing.
        from .services.sessions import auth_session_touch

        validated = self.get_validated_token(raw_token)
        user = self.get_user(validated)
        sid = validated.get("sid")
        if sid is not None and not auth_session_touch(
            session_id=str(sid), user_id=validated[api_settings.USER_ID_CLAIM]
        ):
            raise exceptions.AuthenticationFailed("This session has ended.")
        return user, validated


try:
    from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme

    class SessionJWTScheme(SimpleJWTScheme):
        target_class = "accounts.authentication.SessionJWTAuthentication"
        name = "jwtAuth"

except ImportError:  # pragma: no cover - drf-spectacular always ships it
    pass
