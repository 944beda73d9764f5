"""The chunk PUT as a lean ASGI endpoint, routed before Django.

Sending chunks is the hot path of the product: a 1 GB study is a thousand requests. Through
Django's request path each cost about 10 ms of CPU (eleven middleware, DRF, a new executor
thread and a new database connection per request; see bench/RESULTS.md), three times what
the work itself needs; measured again with an access token, 16-18 ms against 5-7 ms here.
This endpoint serves ``PUT /api/v1/upload/<id>/chunk`` sent with either credential the API
allows: an upload token (what the PWA sends; ``services.chunk_receive``) or the owner's
access token (``services.chunk_receive_signed_in``), both ending in the DRF view's
``chunk_store``, with the same checks, statuses and error bodies, and keeps the database
connections of its own small thread pool open.

Before the body is read, without the database: an upload token's signature, expiry and
upload (a bad or expired one is refused, 401, another upload's too, 404), an access
token's signature and expiry (one that fails goes to Django, which refuses it). After the
body, with the upload's row (read then, so that a cancel while the body arrives is seen):
the credential's session and user (a verified credential is trusted for
UPLOAD_TOKEN_RECHECK_SECONDS), the upload's visibility and owner. Answers that differ from
the DRF view's: another upload's upload token whose session has ended is 404 here, 401
there; and within the trust time a credential whose session or account has just ended is
answered as at its last check (its own upload's chunk stored, another upload 404), where
the DRF view answers 401 at once (docs/security.md).

Everything else goes to Django unchanged: other paths and methods, a credential that is
neither an upload token nor a validly signed access token, hosts not in ALLOWED_HOSTS, and
plain HTTP when SECURE_SSL_REDIRECT is on. Django refuses each of those before a view reads
the body.

Every chunk PUT served here first reserves the bytes it will hold from the process's chunk
memory budget (``uploads.chunk_memory``) and reads its body only once it has them; one
that waits too long is answered 503 ``server_busy`` with Retry-After. Nobody can fill the
budget (and stall every clinic's chunks on this process) without signing in.

A chunk whose body then waited longer than ``UPLOAD_CHUNK_BUSY_SECONDS`` for one of this
process's threads behind at least CHUNK_THREADS other waiting chunks (more chunks arrive
than it stores, not a few slow S3 requests or flushes) is answered with ``max_in_flight: 1``:
the server is the bottleneck, so more chunks at once from a client only queue here (each
waits longer, and the process stores fewer per second: measured in bench/RESULTS.md); the
PWA then sends one at a time for a while. The wait measures this process's backlog, not
the link: a chunk on a slow link waits for its bytes before, not after, its body arrives.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.db import connections

from relaypacs import logging_context
from relaypacs.asgi_requests import request_headers as _headers
from relaypacs.asgi_requests import request_host_allowed as _host_allowed
from relaypacs.asgi_requests import request_is_secure as _is_secure
from relaypacs.asgi_requests import security_middleware_headers
from relaypacs.errors import ApplicationError, error_body

from . import metrics, services
from .chunk_memory import (
    RETRY_AFTER_SECONDS,
    ChunkMemoryBudget,
    ChunkMemoryBusy,
    chunk_memory_budget_from_settings,
)
from .tokens import PREFIX

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The path of the DRF route ``upload/<uuid:upload_id>/chunk`` (Django's uuid converter).
CHUNK_PATH = re.compile(
    r"^/api/v1/upload/(?P<upload_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"/chunk"
)
# Threads (each with its own database connection) per web process: enough to overlap the
# fdatasync of the chunks in flight (the PWA sends up to three at once, spread over the web
# processes); more threads only contend for the GIL.
CHUNK_THREADS = 4
_AUTH_PREFIX = b"bearer " + PREFIX.encode()
_REQUEST_ID_HEADER = logging_context.REQUEST_ID_HEADER.lower().encode()

_executor = ThreadPoolExecutor(max_workers=CHUNK_THREADS, thread_name_prefix="chunk")
_opened = threading.local()


class _Backlog:
    """Chunks handed to the threads that no thread has started yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0

    def joined(self) -> int:
        """One more waiting; how many were waiting before it."""
        with self._lock:
            ahead = self._waiting
            self._waiting += 1
            return ahead

    def started(self) -> None:
        with self._lock:
            self._waiting -= 1

    @property
    def waiting(self) -> int:
        return self._waiting


_backlog = _Backlog()


def _response_headers(body: bytes, *, secure: bool, status: int) -> list[tuple[bytes, bytes]]:
    """JSON headers plus the security headers Django's SecurityMiddleware would add."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"vary", b"Authorization"),
    ]
    headers.extend(security_middleware_headers(secure=secure))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="api"'))
    return headers


async def _answer(
    send: Send,
    status: int,
    payload: dict[str, Any],
    *,
    secure: bool,
    retry_after: int | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = _response_headers(body, secure=secure, status=status)
    if retry_after is not None or status == 503:
        # The error's own wait (storage_unavailable: a minute), else server_busy's.
        seconds = retry_after if retry_after is not None else RETRY_AFTER_SECONDS
        headers.append((b"retry-after", str(seconds).encode()))
    # As RequestIdMiddleware answers every Django response.
    headers.append((_REQUEST_ID_HEADER, logging_context.request_id_var.get().encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer_error(send: Send, error: ApplicationError, *, secure: bool) -> None:
    """An ApplicationError as Django's handler renders it (with its Retry-After)."""
    await _answer(
        send,
        error.status_code,
        {"error": error.as_dict()},
        secure=secure,
        retry_after=error.retry_after,
    )


def _body_dropped(receive: Receive) -> Receive:
    """``receive`` with the request's body left out: an empty body first, then the body's
    messages dropped as they arrive (what else comes, a disconnect, is passed on)."""
    handed = False

    async def without_body() -> dict[str, Any]:
        nonlocal handed
        if not handed:
            handed = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # type: ignore[no-any-return]

    return without_body  # type: ignore[return-value]


async def _read_body(receive: Receive, limit: int, length: int | None) -> bytearray | None:
    """The request body, at most ``limit`` bytes; None when the client went away.

    With a Content-Length of at most ``limit``, the body goes into one buffer of that
    size, allocated once: the process holds the chunk once, as much as it reserved.
    Without one, it grows as the pieces arrive."""
    if length is not None and length <= limit:
        buffer = bytearray(length)
        view = memoryview(buffer)
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            end = size + len(piece)
            if end > length:
                # More than announced (no server passes that on): one byte more than
                # the length, which chunk_store refuses as the wrong size.
                view.release()
                return buffer[:size] + piece[: length + 1 - size]
            view[size:end] = piece
            size = end
            if not message.get("more_body", False):
                view.release()
                return buffer if size == length else buffer[:size]
    grown = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        grown += message.get("body", b"")
        if len(grown) >= limit or not message.get("more_body", False):
            return grown


def _reservation(headers: dict[bytes, bytes]) -> int:
    """The bytes a chunk PUT will hold: its Content-Length, capped at the largest chunk;
    the largest chunk when the length is missing or not a number."""
    largest = int(settings.UPLOAD_MAX_CHUNK_SIZE)
    length = _content_length(headers)
    return largest if length is None else min(length, largest + 1)


def _signed_access_token(headers: dict[bytes, bytes]) -> str | None:
    """The access token (JWT) the request carries, when its signature and expiry are valid:
    checked without the database (its session and account are checked with the upload's
    row). The header is read as simplejwt's authentication reads it (the scheme exactly
    as AUTH_HEADER_TYPES spells it, one token), so that a header the DRF view ignores goes
    to the DRF view and is refused there."""
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework_simplejwt.authentication import JWTAuthentication
    from rest_framework_simplejwt.exceptions import TokenError
    from rest_framework_simplejwt.tokens import AccessToken

    try:
        # None for another scheme; raises for "Bearer" without exactly one token.
        raw = JWTAuthentication().get_raw_token(headers.get(b"authorization", b""))
        if raw is None:
            return None
        AccessToken(raw)  # type: ignore[arg-type]
    except (AuthenticationFailed, TokenError):
        return None
    return raw.decode("latin-1")


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    raw = headers.get(b"content-length")
    try:
        length = int(raw) if raw is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _release_connections() -> None:
    """Keep this thread's connections open for the next chunk, unless they failed or are
    older than CHUNK_DB_CONN_MAX_AGE (0 closes them after every request, as tests do)."""
    max_age = settings.CHUNK_DB_CONN_MAX_AGE
    now = time.monotonic()
    opened: dict[str, tuple[int, float]] = _opened.__dict__.setdefault("at", {})
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        raw_id, since = opened.get(conn.alias, (0, now))
        if raw_id != id(conn.connection):
            since = now
        if conn.errors_occurred:
            if not conn.is_usable():
                conn.close()
                continue
            conn.errors_occurred = False
        if max_age <= 0 or now - since > max_age:
            conn.close()
            continue
        opened[conn.alias] = (id(conn.connection), since)


def _receive_in_thread(
    *, submitted: float, receive: Callable[..., services.ChunkReceipt], **kwargs: Any
) -> tuple[services.ChunkReceipt, float]:
    """The chunk stored by ``receive`` (``services.chunk_receive`` or
    ``chunk_receive_signed_in``), and how long it waited for this thread since
    ``submitted``."""
    _backlog.started()
    waited = time.monotonic() - submitted
    try:
        with metrics.chunk_request() as counted:
            counted.receipt = receive(**kwargs)
        return counted.receipt, waited
    finally:
        _release_connections()


class ChunkEndpoint:
    """ASGI app: chunk PUTs with an upload token or a validly signed access token here,
    within the chunk memory budget; every other request to ``fallback``."""

    def __init__(self, fallback: AsgiApp, budget: ChunkMemoryBudget | None = None) -> None:
        self.fallback = fallback
        # Made at start-up, so that a budget below the largest chunk is reported then.
        self.budget = budget or chunk_memory_budget_from_settings()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            CHUNK_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "PUT"
            else None
        )
        if match is None:
            return await self.fallback(scope, receive, send)
        headers = _headers(scope)
        with_upload_token = headers.get(b"authorization", b"").lower().startswith(_AUTH_PREFIX)
        secure = _is_secure(scope, headers)
        access_token = None if with_upload_token else _signed_access_token(headers)
        if (
            not _host_allowed(headers)
            or (settings.SECURE_SSL_REDIRECT and not secure)
            or not (with_upload_token or access_token)
        ):
            # Django refuses each of these before a view reads the body (400, 301, 401;
            # DRF can authenticate no credential this endpoint did not vouch for), but its
            # handler reads a whole body first: it gets none, and the body is dropped as it
            # arrives, so that nobody can make this process hold (or spool to disk) bytes
            # without signing in.
            return await self.fallback(scope, _body_dropped(receive), send)
        # The ids of this request's log lines (and of the tasks it starts), as
        # RequestIdMiddleware sets them for Django's requests; reset when it ends.
        request_token = logging_context.request_id_var.set(_request_id(headers))
        upload_token = logging_context.upload_id_var.set(match["upload_id"])
        try:
            await self._serve(
                scope,
                receive,
                send,
                match["upload_id"],
                headers,
                secure=secure,
                access_token=access_token,
            )
        finally:
            logging_context.request_id_var.reset(request_token)
            logging_context.upload_id_var.reset(upload_token)
        return None

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_upload_id: str,
        headers: dict[bytes, bytes],
        *,
        secure: bool,
        access_token: str | None,
    ) -> None:
        """``access_token``: the request's signed access token; None: it has an upload token."""
        upload_id = uuid.UUID(raw_upload_id)
        checked_by: Callable[..., services.ChunkReceipt]
        if access_token is None:
            token = headers[b"authorization"].decode("latin-1").partition(" ")[2].strip()
            # Signature, expiry and upload first, without the database and before a byte of
            # the body is read: any "Bearer upl_..." header routes here, and a refused one
            # must not make this process wait for (and hold) up to 16 MiB of body. The
            # server discards whatever of the body still arrives.
            try:
                with metrics.chunk_request():
                    services.chunk_token_read(upload_id=upload_id, upload_token=token)
            except ApplicationError as error:
                await _answer_error(send, error, secure=secure)
                return
            checked_by = partial(services.chunk_receive, upload_token=token)
        else:
            # An access token whose signature and expiry were checked (_signed_access_token);
            # its user and session are checked with the upload's row, after the body.
            checked_by = partial(services.chunk_receive_signed_in, access_token=access_token)
        try:
            async with self.budget.reserved(
                _reservation(headers), timeout=settings.CHUNK_MEMORY_WAIT_SECONDS
            ):
                # The body lives in that call's frame only: gone when the bytes go back.
                await self._store(
                    scope, receive, send, upload_id, checked_by, headers, secure=secure
                )
        except ChunkMemoryBusy as busy:
            await _busy_answer(send, busy, secure=secure)

    async def _store(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upload_id: uuid.UUID,
        checked_by: Callable[..., services.ChunkReceipt],
        headers: dict[bytes, bytes],
        *,
        secure: bool,
    ) -> None:
        length = _content_length(headers)
        # A chunk is at most UPLOAD_MAX_CHUNK_SIZE; one byte more tells that it is too long.
        body = await _read_body(receive, settings.UPLOAD_MAX_CHUNK_SIZE + 1, length)
        if body is None:
            return
        # As Django's QueryDict.get: the last value of a repeated parameter.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        md5 = headers.get(b"content-md5")
        call = partial(
            _receive_in_thread,
            submitted=time.monotonic(),
            receive=checked_by,
            upload_id=upload_id,
            index=(query.get("index") or [None])[-1],
            data=body,
            length=length or 0,
            content_md5=md5.decode("latin-1") if md5 is not None else None,
        )
        # run_in_executor does not carry the context to the thread: copied, so that what
        # chunk_receive logs or dispatches there has this request's ids.
        in_context = partial(contextvars.copy_context().run, call)
        ahead = _backlog.joined()
        pending = _executor.submit(in_context)
        # Cancelled before a thread took it (the request's task cancelled): never started.
        pending.add_done_callback(lambda done: _backlog.started() if done.cancelled() else None)
        try:
            receipt, waited = await asyncio.wrap_future(pending)
        except ApplicationError as error:
            await _answer_error(send, error, secure=secure)
            return
        except Exception:
            logger.exception("A chunk could not be stored (upload %s).", upload_id)
            await _answer(send, 500, error_body(**_SERVER_ERROR), secure=secure)
            return
        payload: dict[str, Any] = {
            "index": receipt.index,
            "received": True,
            "bytes_received": receipt.bytes_received,
        }
        if ahead >= CHUNK_THREADS and waited > settings.UPLOAD_CHUNK_BUSY_SECONDS:
            # A backlog, not slow work: one chunk at a time from this client for a while.
            payload["max_in_flight"] = 1
            metrics.CHUNKS_SLOWED_DOWN.inc()
        await _answer(send, 200, payload, secure=secure)


def _request_id(headers: dict[bytes, bytes]) -> str:
    return logging_context.request_id_from(headers.get(_REQUEST_ID_HEADER, b"").decode("latin-1"))


async def _busy_answer(send: Send, busy: ChunkMemoryBusy, *, secure: bool) -> None:
    """503 ``server_busy`` with Retry-After, counted as a chunk refused with that code; its
    body is never read (the server closes the connection after the answer)."""
    metrics.chunk_counted(error_code=busy.code)
    await _answer(send, busy.status_code, {"error": busy.as_dict()}, secure=secure)


_SERVER_ERROR = {
    "code": "server_error",
    "message": "The server could not store this chunk.",
    "hint": "Send it again in a moment; tell your administrator if this keeps happening.",
}
