from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import User

from .tokens import PREFIX, UploadTokenClaim, upload_token_read


class UploadTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer upl_...``: the upload token of one upload.

    ``request.auth`` becomes an UploadTokenClaim; views that serve one upload compare its
    id, and every other view refuses it (see ``uploads.permissions``). The token ends with
    the sign-in session it was issued in and with its user's account.
    """

    def authenticate(self, request: Request) -> tuple[User, UploadTokenClaim] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(PREFIX):
            return None
        # Imported here: DRF loads this class while the services' imports are still loading.
        from .services import upload_token_user

        claim = upload_token_read(token.strip())
        user = upload_token_user(claim=claim) if claim is not None else None
        if claim is None or user is None:
            raise exceptions.AuthenticationFailed("Upload token is not valid or has expired.")
        return user, claim

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class UploadTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "uploads.authentication.UploadTokenAuthentication"
    name = "uploadToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The upload_token returned by upload/init: valid for that upload only.",
        }
