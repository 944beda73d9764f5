"""Writes on accounts: sign-in and sign-out with JWT."""

from __future__ import annotations

from django.contrib.auth import authenticate
from rest_framework.exceptions import ValidationError
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

from relaypacs.errors import ApplicationError

from .models import User


def _invalid_refresh() -> ApplicationError:
    return ApplicationError(
        "invalid_refresh_token",
        "Your session has ended or the sign-in token is not valid.",
        "Sign in again with your username and password.",
        status_code=401,
    )


def session_login(*, username: str, password: str) -> dict[str, str]:
    """Check the credentials and return a fresh ``{access, refresh}`` pair.

    Raises ApplicationError ``invalid_credentials`` (401) for a wrong username or password,
    an inactive or an unverified account, without saying which.
    """
    user = authenticate(username=username, password=password)
    if not isinstance(user, User) or not user.email_verified:
        raise ApplicationError(
            "invalid_credentials",
            "The username or password is not correct.",
            "Check both and try again; ask your administrator if you forgot your password.",
            status_code=401,
        )
    refresh = RefreshToken.for_user(user)
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


def session_refresh(*, refresh: str) -> dict[str, str]:
    """Rotate a refresh token: the old one is blacklisted, a new pair is returned."""
    serializer = TokenRefreshSerializer(data={"refresh": refresh})
    try:
        serializer.is_valid(raise_exception=True)
    except (TokenError, InvalidToken, ValidationError) as exc:
        raise _invalid_refresh() from exc
    return {
        "access": serializer.validated_data["access"],
        "refresh": serializer.validated_data["refresh"],
    }


def session_logout(*, refresh: str) -> None:
    """Blacklist the refresh token; logging out twice is harmless."""
    try:
        RefreshToken(refresh).blacklist()  # type: ignore[arg-type]
    except TokenError as exc:
        if "blacklisted" in str(exc).lower():
            return
        raise _invalid_refresh() from exc
