"""Storing chunks: the hot path of an upload, about a thousand requests per GB.

Each chunk is checked (state, range, size, MD5), claimed by a unique row before a byte is
written, written at its offset, then marked stored. Measured on the 2-core reference
machine (bench/RESULTS.md), one ORM query cost 0.4-0.8 ms of CPU, more than the MD5 of
the 1 MiB chunk, and a chunk needed ten of them. So the per-chunk statements are plain SQL
through Django's connection (0.04 ms each; portable: SQLite 3.35+ and PostgreSQL both
have ON CONFLICT and RETURNING): read the upload, claim, then mark stored and add the
chunk's bytes to the upload's counter row in one transaction. The work per chunk is the
same at the first chunk and the ten-thousandth: no statement reads more than the rows of
this chunk and of the counter (``uploads/tests/test_chunk_cost.py`` counts them). The
upload's own row is not written by every chunk: its ``last_chunk_at`` is written at most
once a minute; the counter is a narrow row of its own, locked only between its update and
the commit right after it. A verified upload token (or access token) is trusted for
UPLOAD_TOKEN_RECHECK_SECONDS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from relaypacs.errors import ApplicationError

from .. import storage
from ..models import UploadChunk, UploadChunkCounter, UploadSession, UploadState
from ..selectors import ROLES_WITH_OWN_UPLOADS, upload_expires_at, uploads_visible_to
from ..tokens import UploadTokenClaim, upload_token_read
from .prehash import prehash_due, prehash_request

# How stale the upload's last_chunk_at may be: the resume window (hours) slides from it.
LAST_CHUNK_AT_RESOLUTION = timedelta(minutes=1)
# Verified upload tokens (and access tokens of chunk PUTs) remembered per process, dropped all at once beyond this many
# (a web process sees a few hundred uploads a day; this bounds its memory).
_VERIFIED_MAX = 10_000
_verified: dict[str, tuple[float, int, str]] = {}  # token -> (trusted until, user id, role)


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes | memoryview: ...


class ChunkTarget(Protocol):
    """What storing a chunk needs of its upload: an UploadSession, or the row the chunk
    endpoint reads (``chunk_target_get``)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def state(self) -> str: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def total_size(self) -> int: ...
    @property
    def total_chunks(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def last_chunk_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class UploadRow:
    id: uuid.UUID
    owner_id: int
    state: str
    chunk_size: int
    total_size: int
    total_chunks: int
    created_at: datetime
    last_chunk_at: datetime | None


@dataclass(frozen=True)
class ChunkReceipt:
    index: int
    bytes_received: int
    # Stored by an earlier request (a retry whose answer was lost): nothing was written.
    duplicate: bool = False
    size: int = 0


def _table(model: type[Any]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _col(name: str) -> str:
    return connection.ops.quote_name(name)


def _upload_pk(upload_id: uuid.UUID) -> Any:
    return UploadSession._meta.pk.get_db_prep_value(upload_id, connection)  # type: ignore[union-attr]


def _moment(value: Any) -> datetime | None:
    """A datetime column read by plain SQL: aware, whatever the database returned."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def _not_receiving(state: str) -> ApplicationError:
    label = UploadState(state).label.lower()
    return ApplicationError(
        "upload_not_receiving",
        f"This upload is no longer receiving data (it is {label}).",
        "Check its status; start a new upload if you need to send the files again.",
        status_code=409,
        extra={"state": state},
    )


def upload_ensure_receiving(session: ChunkTarget) -> None:
    """Raises 409 ``upload_not_receiving`` or 410 ``upload_expired``."""
    if session.state != UploadState.RECEIVING:
        raise _not_receiving(session.state)
    if upload_expires_at(session=session) < timezone.now():
        raise ApplicationError(
            "upload_expired",
            "This upload waited too long without data and has expired.",
            "Start the upload again; the app can do this from the files it kept.",
            status_code=410,
        )


def _decode_md5(content_md5: str | None) -> str:
    if not content_md5:
        raise ApplicationError(
            "checksum_required",
            "The chunk was sent without its Content-MD5 checksum.",
            "Send each chunk with a Content-MD5 header (base64 of the MD5 of the body).",
        )
    try:
        raw = base64.b64decode(content_md5.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise ApplicationError(
            "checksum_required",
            "The Content-MD5 header is not a base64-encoded MD5 digest.",
            "Send base64 of the 16-byte MD5 of the chunk body.",
        )
    return raw.hex()


def chunk_index_parse(raw: str | None) -> int:
    """The ``index`` query parameter of a chunk PUT. Raises 422 ``chunk_out_of_range``."""
    try:
        return int(raw or "")
    except ValueError:
        raise ApplicationError(
            "chunk_out_of_range",
            "The chunk number (index) is missing or not a whole number.",
            "Send the chunk as PUT .../chunk?index=N.",
            status_code=422,
        ) from None


# Tries of _claim's insert-or-count: the row its INSERT met can be deleted before its
# UPDATE (a complete or a restore's reconcile forgetting a lost chunk), and then the next
# INSERT makes it; a third try would need that to happen twice within milliseconds.
CLAIM_TRIES = 3


def _claim(*, upload_pk: Any, index: int, size: int, md5: str) -> tuple[str, bool]:
    """Claim chunk ``index`` for ``md5``; the claimed MD5 and whether it is stored.

    A chunk claimed before (a retry, or a racing request) keeps its first claim and
    counts one more arrival. A claim forgotten between the two statements
    (``recovery.upload_chunks_forget`` deletes it) is claimed anew.
    """
    chunk = _table(UploadChunk)
    with connection.cursor() as cursor:
        for _ in range(CLAIM_TRIES):
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(
                f"INSERT INTO {chunk} (session_id, {_col('index')}, size, md5, stored,"  # noqa: S608
                f" times_received, received_at) VALUES (%s, %s, %s, %s, %s, 1, %s)"
                f" ON CONFLICT (session_id, {_col('index')}) DO NOTHING",
                [upload_pk, index, size, md5, False, now],
            )
            if cursor.rowcount == 1:
                return md5, False
            cursor.execute(
                f"UPDATE {chunk} SET times_received = times_received + 1"  # noqa: S608
                f" WHERE session_id = %s AND {_col('index')} = %s RETURNING md5, stored",
                [upload_pk, index],
            )
            row = cursor.fetchone()
            if row is not None:
                claimed_md5, stored = row
                return claimed_md5, bool(stored)
    # Not a state a client can cause: a 500, after which the client sends the chunk again.
    raise RuntimeError(f"chunk {index}'s claim was forgotten {CLAIM_TRIES} times in a row")


def _mark_stored(*, upload: ChunkTarget, upload_pk: Any, index: int, size: int) -> int:
    """Mark the chunk stored and count its bytes, once; the upload's bytes received.

    The chunk's flag and the counter change in one transaction, and only the request whose
    UPDATE turned the flag counts the bytes (a racing retry of the same chunk finds it
    stored), so the counter is always the sum of the stored chunks' sizes. The upload's
    ``last_chunk_at`` moves when it is a minute old.
    """
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    counter = _table(UploadChunkCounter)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_table(UploadChunk)} SET stored = %s, received_at = %s"  # noqa: S608
            f" WHERE session_id = %s AND {_col('index')} = %s AND stored = %s",
            [True, adapt(now), upload_pk, index, False],
        )
        if cursor.rowcount == 1:
            # Last before the commit: the counter row stays locked for that moment only.
            cursor.execute(
                f"INSERT INTO {counter} (session_id, bytes_received) VALUES (%s, %s)"  # noqa: S608
                f" ON CONFLICT (session_id) DO UPDATE"
                f" SET bytes_received = {counter}.bytes_received + excluded.bytes_received"
                " RETURNING bytes_received",
                [upload_pk, size],
            )
            received = int(cursor.fetchone()[0])
        else:
            received = _counted_bytes(upload_pk=upload_pk)
    last = upload.last_chunk_at
    if last is None or now - last >= LAST_CHUNK_AT_RESOLUTION:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {_table(UploadSession)} SET last_chunk_at = %s"  # noqa: S608
                " WHERE id = %s AND (last_chunk_at IS NULL OR last_chunk_at < %s)",
                [adapt(now), upload_pk, adapt(now - LAST_CHUNK_AT_RESOLUTION)],
            )
    return received


def _counted_bytes(*, upload_pk: Any) -> int:
    """The bytes of the upload's stored chunks: its counter row (one primary-key read)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT bytes_received FROM {_table(UploadChunkCounter)}"  # noqa: S608
            " WHERE session_id = %s",
            [upload_pk],
        )
        row = cursor.fetchone()
    return int(row[0]) if row is not None else 0


def chunk_store(
    *, session: ChunkTarget, index: int, body: Readable, length: int, content_md5: str | None
) -> ChunkReceipt:
    """Check, claim and write chunk ``index`` of ``session``.

    The MD5 is verified and the chunk claimed (a unique row) before a byte is written, so a
    conflicting retry can never overwrite an acknowledged chunk. Idempotent for the same
    bytes; safe beside concurrent writers of other chunks (positional writes).
    Raises 422 ``chunk_out_of_range``/``chunk_size_mismatch``/``checksum_mismatch``,
    409 ``chunk_conflict``/``upload_not_receiving``, 410 ``upload_expired``.
    """
    upload_ensure_receiving(session)
    if index < 0 or index >= session.total_chunks:
        raise ApplicationError(
            "chunk_out_of_range",
            f"Chunk {index} does not exist: this upload has chunks 0 to {session.total_chunks - 1}.",
            "Ask the upload status for missing_chunks and send only those.",
            status_code=422,
        )
    expected = min(session.chunk_size, session.total_size - index * session.chunk_size)
    if length != expected:
        raise ApplicationError(
            "chunk_size_mismatch",
            f"Chunk {index} must be {expected} bytes but {length} bytes arrived.",
            "The connection may have cut the chunk short; send it again.",
            status_code=422,
        )
    expected_md5 = _decode_md5(content_md5)
    data = body.read(length + 1)
    if len(data) != expected:
        raise ApplicationError(
            "chunk_size_mismatch",
            f"Chunk {index} must be {expected} bytes but {len(data)} bytes arrived.",
            "The connection may have cut the chunk short; send it again.",
            status_code=422,
        )
    actual_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual_md5 != expected_md5:
        raise ApplicationError(
            "checksum_mismatch",
            f"Chunk {index} was damaged on the way: its checksum does not match.",
            "Send the chunk again; nothing of it was stored.",
            status_code=422,
        )
    upload_pk = _upload_pk(session.id)
    claimed_md5, stored = _claim(upload_pk=upload_pk, index=index, size=expected, md5=actual_md5)
    if claimed_md5 != actual_md5:
        raise ApplicationError(
            "chunk_conflict",
            f"Chunk {index} was already received with different content.",
            "The file may have changed since the upload started; start a new upload.",
            status_code=409,
        )
    if stored:
        return ChunkReceipt(
            index=index,
            bytes_received=_counted_bytes(upload_pk=upload_pk),
            duplicate=True,
            size=expected,
        )
    # Same bytes as the claim: writing them again (a racing retry) is harmless.
    storage.stream_write(upload_id=session.id, offset=index * session.chunk_size, data=data)
    if storage.stream_write_recreates():
        _ensure_still_wanted(upload_id=session.id, upload_pk=upload_pk)
    received = _mark_stored(upload=session, upload_pk=upload_pk, index=index, size=expected)
    if prehash_due(stored_before=received - expected, stored_after=received):
        prehash_request(upload_id=session.id)
    return ChunkReceipt(index=index, bytes_received=received, size=expected)


def _ensure_still_wanted(*, upload_id: uuid.UUID, upload_pk: Any) -> None:
    """After a write that can recreate a deleted stream (S3): when the upload was cancelled,
    had its bytes deleted or was removed while the chunk was on its way, the chunk just
    written is patient data nobody will delete (the deletion ran before it landed), so the
    upload's objects are deleted again and the chunk refused (409). Deletion always follows
    the state change that asks for it, so a chunk that lands after that deletion sees the
    new state here. One primary-key read, in S3 mode only."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT state, files_deleted FROM {_table(UploadSession)} WHERE id = %s",  # noqa: S608
            [upload_pk],
        )
        row = cursor.fetchone()
    if row is not None and row[0] != UploadState.CANCELLED and not row[1]:
        return
    storage.stream_delete(upload_id=upload_id)  # on failure, the orphan sweep removes it
    if row is None:
        raise ApplicationError(*_NOT_FOUND, status_code=404)
    raise _not_receiving(str(row[0]))


def upload_token_user(*, claim: UploadTokenClaim) -> User | None:
    """The active user an upload token acts for, while its sign-in session is on (the
    session is marked as seen, as an access token's use does)."""
    from accounts.services import auth_session_touch

    user = User.objects.filter(pk=claim.user_id, is_active=True).first()
    if user is None:
        return None
    if claim.session_id is not None and not auth_session_touch(
        session_id=claim.session_id, user_id=user.pk
    ):
        return None
    return user


@dataclass(frozen=True)
class _TokenUser:
    claim: UploadTokenClaim
    user_id: int
    role: str


def _token_user(token: str) -> _TokenUser | None:
    """The claim and user of a valid upload token; checked against the database at most
    every UPLOAD_TOKEN_RECHECK_SECONDS (so signing out ends chunk uploads within that)."""
    claim = upload_token_read(token)
    if claim is None:
        return None
    trusted = _trusted_user(token, check=lambda: upload_token_user(claim=claim))
    if trusted is None:
        return None
    return _TokenUser(claim=claim, user_id=trusted[0], role=trusted[1])


def _trusted_user(token: str, *, check: Callable[[], User | None]) -> tuple[int, str] | None:
    """The id and role of the user a credential acts for: ``check()`` (its database checks:
    session, account), or what it said less than UPLOAD_TOKEN_RECHECK_SECONDS ago. The
    caller checks the credential's signature and expiry every time."""
    now = time.monotonic()
    known = _verified.get(token)
    if known is not None and known[0] > now:
        return known[1], known[2]
    user = check()
    if user is None:
        _verified.pop(token, None)
        return None
    if settings.UPLOAD_TOKEN_RECHECK_SECONDS > 0:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[token] = (now + settings.UPLOAD_TOKEN_RECHECK_SECONDS, user.pk, user.role)
    return user.pk, user.role


def chunk_target_get(*, upload_id: uuid.UUID) -> UploadRow | None:
    """The fields of the upload that storing a chunk needs, in one plain query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT owner_id, state, chunk_size, total_size, total_chunks, created_at,"  # noqa: S608
            f" last_chunk_at FROM {_table(UploadSession)} WHERE id = %s",
            [_upload_pk(upload_id)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    owner_id, state, chunk_size, total_size, total_chunks, created_at, last_chunk_at = row
    return UploadRow(
        id=upload_id,
        owner_id=int(owner_id),
        state=str(state),
        chunk_size=int(chunk_size),
        total_size=int(total_size),
        total_chunks=int(total_chunks),
        created_at=_moment(created_at),  # type: ignore[arg-type]
        last_chunk_at=_moment(last_chunk_at),
    )


class _Received:
    """A body already read, as the readable ``chunk_store`` takes (no copy)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data)

    def read(self, size: int = -1, /) -> memoryview:
        return self._view if size < 0 else self._view[:size]


_NOT_AUTHENTICATED = (
    "authentication_failed",
    "Your sign-in could not be checked or has expired.",
    "Sign in again, then repeat what you were doing.",
)
# As the DRF exception handler renders Http404, so both chunk paths answer alike.
_NOT_FOUND = (
    "not_found",
    "Nothing was found here.",
    "Check the link or the upload id; it may have been cancelled or removed.",
)


def chunk_token_read(*, upload_id: uuid.UUID, upload_token: str) -> UploadTokenClaim:
    """The claim of an upload token for chunks of ``upload_id``, checked without the
    database: signature and expiry (401 ``authentication_failed``) and that the token is
    this upload's (404 ``not_found``). Cheap enough to run before a byte of the body is read.
    """
    claim = upload_token_read(upload_token)
    if claim is None:
        raise ApplicationError(*_NOT_AUTHENTICATED, status_code=401)
    if claim.upload_id != upload_id:
        raise ApplicationError(*_NOT_FOUND, status_code=404)
    return claim


def chunk_sender_ensure_owner(*, session: UploadSession | UploadRow, user_id: int | None) -> None:
    """Chunks come from the upload's owner only: an administrator or a colleague may follow
    an upload, not write bytes into it. Raises 403 ``permission_denied``."""
    if session.owner_id != user_id:
        raise ApplicationError(
            "permission_denied",
            "Only the person who started this upload can send its files.",
            "Ask them to finish sending it from their device; you can still follow its status.",
            status_code=403,
        )


def chunk_receive(
    *,
    upload_id: uuid.UUID,
    upload_token: str,
    index: str | None,
    data: bytes | bytearray | memoryview,
    length: int,
    content_md5: str | None,
) -> ChunkReceipt:
    """A chunk PUT sent with an upload token, from the token to the stored chunk.

    The lean chunk endpoint (``uploads.chunk_endpoint``) calls ``chunk_token_read`` before
    it reads the body, then this with the body. It checks what the DRF view and its
    authentication check, in the same order, with the same errors: 401
    ``authentication_failed`` for a token that is not valid, expired, or whose session or
    account has ended; 404 ``not_found`` for another upload or one the token's user may
    not reach; 403 ``permission_denied`` for a user who reaches it but is not its owner;
    then ``chunk_index_parse`` and ``chunk_store``.
    """
    chunk_token_read(upload_id=upload_id, upload_token=upload_token)
    verified = _token_user(upload_token)
    if verified is None:
        raise ApplicationError(*_NOT_AUTHENTICATED, status_code=401)
    return _chunk_store_as(
        upload_id=upload_id,
        user_id=verified.user_id,
        role=verified.role,
        index=index,
        data=data,
        length=length,
        content_md5=content_md5,
    )


def chunk_receive_signed_in(
    *,
    upload_id: uuid.UUID,
    access_token: str,
    index: str | None,
    data: bytes | bytearray | memoryview,
    length: int,
    content_md5: str | None,
) -> ChunkReceipt:
    """A chunk PUT sent with the owner's access token (the API allows either token), from
    the token to the stored chunk, as the DRF view answers it.

    The token is checked as the DRF authentication checks it
    (``SessionJWTAuthentication``): its signature and expiry on every chunk, its user (active)
    and sign-in session (still on) at most every UPLOAD_TOKEN_RECHECK_SECONDS, as for an
    upload token: 401 ``authentication_failed`` otherwise. Then, as for an upload token: 404
    ``not_found`` for an upload the user may not reach, 403 ``permission_denied`` for one
    they reach but do not own, ``chunk_index_parse`` and ``chunk_store``.
    """
    from rest_framework.exceptions import AuthenticationFailed

    from accounts.authentication import SessionJWTAuthentication

    authentication = SessionJWTAuthentication()
    raw = access_token.encode("latin-1")  # the header's bytes, as the endpoint read them

    def user_of_token() -> User | None:
        try:
            return authentication.user_for_token(raw)[0]  # type: ignore[no-any-return]
        except AuthenticationFailed:
            return None

    try:
        validated = authentication.get_validated_token(raw)
    except AuthenticationFailed as failed:
        raise ApplicationError(*_NOT_AUTHENTICATED, status_code=401) from failed
    # Keyed by the token's id, not its spelling (a JWT decoder may accept more than one).
    trusted = _trusted_user(f"jwt:{validated.get('jti') or access_token}", check=user_of_token)
    if trusted is None:
        raise ApplicationError(*_NOT_AUTHENTICATED, status_code=401)
    return _chunk_store_as(
        upload_id=upload_id,
        user_id=trusted[0],
        role=trusted[1],
        index=index,
        data=data,
        length=length,
        content_md5=content_md5,
    )


def _chunk_store_as(
    *,
    upload_id: uuid.UUID,
    user_id: int,
    role: str,
    index: str | None,
    data: bytes | bytearray | memoryview,
    length: int,
    content_md5: str | None,
) -> ChunkReceipt:
    """The chunk stored for a user whose credential was checked: 404 ``not_found`` for an
    upload they may not reach, 403 ``permission_denied`` for one they reach but do not
    own, then ``chunk_index_parse`` and ``chunk_store``."""
    target = chunk_target_get(upload_id=upload_id)
    owner_reaches_it = (
        target is not None and target.owner_id == user_id and role in ROLES_WITH_OWN_UPLOADS
    )
    if target is not None and not owner_reaches_it:
        # A token minted for someone else (before tokens went to owners only), an owner
        # whose role changed, or a colleague's access token: as far as the user's role
        # reaches today (uploads_visible_to, as the DRF views ask), then refused unless
        # they own it.
        user = User.objects.filter(pk=user_id).first()
        if user is None or not uploads_visible_to(user=user).filter(pk=upload_id).exists():
            target = None
    if target is None:
        raise ApplicationError(*_NOT_FOUND, status_code=404)
    chunk_sender_ensure_owner(session=target, user_id=user_id)
    return chunk_store(
        session=target,
        index=chunk_index_parse(index),
        body=_Received(data),
        length=length,
        content_md5=content_md5,
    )
