"""The SSE stream (``GET /api/v1/notifications/stream``) as a lean ASGI endpoint, routed
before Django.

A held stream is memory for as long as it is open: through Django each one also keeps its
request, response, middleware chain and URL resolution alive (about 48 KB of Python
objects, twice what the stream itself needs; see bench/RESULTS.md). This endpoint serves
the GET with the same ``live.sse_open`` as the Django view (``apis.notifications_stream``):
same authentication (``Authorization: Bearer`` or ``?ticket=``), same resume
(``Last-Event-ID``, else ``?last_event_id=``), same messages, statuses, error bodies and
headers, including those Django's middleware adds (security headers, X-Frame-Options,
X-Request-ID), but for ``Vary: Cookie``, which Django adds because its session middleware
is asked for the user and which does not apply here (no cookie is read). The stream ends
when the client goes away, as Django's handler does.

Everything else goes to Django unchanged: other paths and methods (405 there), hosts not
in ALLOWED_HOSTS, and plain HTTP when SECURE_SSL_REDIRECT is on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

from relaypacs import logging_context
from relaypacs.asgi_requests import request_headers as _headers
from relaypacs.asgi_requests import request_host_allowed as _host_allowed
from relaypacs.asgi_requests import request_is_secure as _is_secure
from relaypacs.asgi_requests import security_middleware_headers
from relaypacs.errors import ApplicationError, error_body

from . import live

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The path of the Django route ``notifications/stream`` under ``api/v1/``.
STREAM_PATH = "/api/v1/notifications/stream"
_REQUEST_ID_HEADER = logging_context.REQUEST_ID_HEADER.lower().encode()
_SSE_HEADERS = [
    (b"content-type", live.SSE_CONTENT_TYPE.encode()),
    *((name.lower().encode(), value.encode()) for name, value in live.SSE_HEADERS.items()),
]


def _security_headers(*, secure: bool) -> list[tuple[bytes, bytes]]:
    """What SecurityMiddleware and XFrameOptionsMiddleware add to a Django response, and
    RequestIdMiddleware's X-Request-ID."""
    headers: list[tuple[bytes, bytes]] = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    headers.extend(security_middleware_headers(secure=secure))
    headers.append((b"x-frame-options", str(settings.X_FRAME_OPTIONS).upper().encode()))
    headers.append((_REQUEST_ID_HEADER, logging_context.request_id_var.get().encode()))
    return headers


# What a client is told when opening its stream failed unexpectedly (the database down):
# it reconnects by itself, and polls meanwhile.
_STREAM_NOT_OPENED = ApplicationError(
    "server_error",
    "The server could not open the live updates.",
    "The app tries again by itself; tell your administrator if this keeps happening.",
    status_code=500,
)


async def _refuse(send: Send, error: ApplicationError, *, secure: bool) -> None:
    """The error as the view answers it: the one error shape, with WWW-Authenticate."""
    body = json.dumps(error_body(error.code, error.message, error.hint, **error.extra)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *_security_headers(secure=secure),
        (b"www-authenticate", b'Bearer realm="api"'),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_stream(send: Send, body: AsyncIterator[bytes], *, secure: bool) -> None:
    headers = [*_SSE_HEADERS, *_security_headers(secure=secure)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async for part in body:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class SseEndpoint:
    """ASGI app: GET of the SSE stream here, every other request to ``fallback``."""

    def __init__(self, fallback: AsgiApp) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != STREAM_PATH:
            return await self.fallback(scope, receive, send)
        headers = _headers(scope)
        secure = _is_secure(scope, headers)
        if not _host_allowed(headers) or (settings.SECURE_SSL_REDIRECT and not secure):
            return await self.fallback(scope, receive, send)
        # The request id of this stream's log lines, as RequestIdMiddleware sets it.
        given = headers.get(_REQUEST_ID_HEADER, b"")
        request_token = logging_context.request_id_var.set(
            logging_context.request_id_from(given.decode("latin-1"))
        )
        upload_token = logging_context.upload_id_var.set("")
        try:
            await self._serve(scope, receive, send, headers, secure=secure)
        finally:
            logging_context.request_id_var.reset(request_token)
            logging_context.upload_id_var.reset(upload_token)
        return None

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        *,
        secure: bool,
    ) -> None:
        # As Django's QueryDict.get: the last value of a repeated parameter.
        query = parse_qs(
            scope.get("query_string", b"").decode("latin-1"),
            keep_blank_values=True,
            errors="replace",
        )
        last_event_id = headers.get(b"last-event-id", b"").decode("latin-1")
        try:
            body = await live.sse_open(
                authorization=headers.get(b"authorization", b"").decode("latin-1"),
                ticket=(query.get("ticket") or [""])[-1],
                last_event_id=last_event_id or (query.get("last_event_id") or [None])[-1],
            )
        except ApplicationError as error:
            await _refuse(send, error, secure=secure)
            return
        except Exception as exc:  # noqa: BLE001 - the error shape, never uvicorn's bare 500
            logger.error("A notification stream could not be opened: %s", type(exc).__name__)
            await _refuse(send, _STREAM_NOT_OPENED, secure=secure)
            return
        # The stream runs until it ends (session ended, token expired, failure) or the
        # client goes away, whichever comes first; the other is then cancelled.
        streaming = asyncio.ensure_future(_send_stream(send, body, secure=secure))
        listening = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, listening):
                task.cancel()
            outcomes = await asyncio.gather(streaming, listening, return_exceptions=True)
            # Runs the stream's cleanup (it leaves the hub) if it stopped between messages.
            await body.aclose()
        failed = outcomes[0]
        if isinstance(failed, Exception):
            logger.warning("notification stream not sent: %s", type(failed).__name__)
