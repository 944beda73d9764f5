"""Upload tokens: signed, expiring, valid for one upload only, and ended with their session.

A token carries the upload, its owner and the sign-in session (``sid`` of the access
token it was issued to). Signing out, revoking that session or its idle expiry ends the
upload tokens issued in it too (checked by ``uploads.authentication`` and the chunk
endpoint through ``accounts``' session check).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core import signing

PREFIX = "upl_"
_SALT = "relaypacs.upload-token.v1"


@dataclass(frozen=True)
class UploadTokenClaim:
    upload_id: uuid.UUID
    # The user the token acts for, never with more than that user may do now. Tokens are
    # issued to the upload's owner only (``upload_token_refresh``); a token minted for
    # anyone else opens only what that user may reach and never sends chunks.
    user_id: int
    # The sign-in session the token was issued in; None for tokens issued to an access
    # token without one (scripts and tests that mint tokens with RefreshToken.for_user).
    session_id: str | None = None


def upload_token_issue(*, upload_id: uuid.UUID, user_id: int, session_id: str | None = None) -> str:
    payload: dict[str, object] = {"u": str(upload_id), "o": user_id}
    if session_id:
        payload["s"] = str(session_id)
    return PREFIX + signing.dumps(payload, salt=_SALT, compress=False)


def upload_token_read(token: str) -> UploadTokenClaim | None:
    """The claim of a genuine, unexpired token; None for anything else."""
    if not token.startswith(PREFIX):
        return None
    try:
        data = signing.loads(
            token[len(PREFIX) :],
            salt=_SALT,
            max_age=settings.UPLOAD_RESUME_WINDOW,
        )
        session_id = data.get("s")
        return UploadTokenClaim(
            upload_id=uuid.UUID(data["u"]),
            user_id=int(data["o"]),
            session_id=str(session_id) if session_id is not None else None,
        )
    except (signing.BadSignature, KeyError, ValueError, TypeError, AttributeError):
        return None
