"""Upload tokens: signed, expiring, valid for one upload only."""

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
    owner_id: int


def upload_token_issue(*, upload_id: uuid.UUID, owner_id: int) -> str:
    value = signing.dumps({"u": str(upload_id), "o": owner_id}, salt=_SALT, compress=False)
    return PREFIX + value


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
        return UploadTokenClaim(upload_id=uuid.UUID(data["u"]), owner_id=int(data["o"]))
    except (signing.BadSignature, KeyError, ValueError, TypeError):
        return None
