from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import Role
from relaypacs.errors import ApplicationError

from .tokens import UploadTokenClaim

# Roles that send studies; radiologists and auditors read, they do not upload.
UPLOADER_ROLES = frozenset({Role.CLINICIAN, Role.RADIOGRAPHER, Role.ADMIN})


def _upload_token_not_accepted() -> ApplicationError:
    return ApplicationError(
        "upload_token_not_accepted",
        "This request needs your sign-in, not an upload token.",
        "Send it with your access token. An upload token only sends the chunks of its own "
        "upload, reads its status and completes it.",
        status_code=403,
    )


class AccessTokenOnly(BasePermission):
    """Signed in with an access token (an upload token opens one upload only).

    Starting an upload also needs a role that uploads. Views of one upload leave the
    rest to queryset scoping, so an upload the user may not reach is 404, never 403.
    """

    message = "Your account is not allowed to send studies."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not user:
            return False
        if isinstance(request.auth, UploadTokenClaim):
            raise _upload_token_not_accepted()
        if request.method in SAFE_METHODS or "upload_id" in view.kwargs:
            return True
        return getattr(user, "role", None) in UPLOADER_ROLES


class AccessTokenToControl(BasePermission):
    """An upload token sends chunks, reads the status and completes its upload; cancelling,
    retrying, confirming and new upload tokens need the signed-in user's access token."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if isinstance(request.auth, UploadTokenClaim):
            raise _upload_token_not_accepted()
        return True
